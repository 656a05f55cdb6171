"""A fingerprint of a base model's UNet, recorded in deltas and LoRAs and checked when they are loaded.

A delta or LoRA only makes sense on the model it was made from; names and shapes catch another
architecture, the fingerprint catches another model of the same architecture (SD 1.4 vs 1.5, a
community fine-tune). It is the SHA-256 of a few UNet tensors spread over the network, rounded to
fp16 first so that the fp16 and fp32 files of one model agree. Tensors the erasure changed are
never among them, so the fingerprint is the same whether or not the erasure is applied. An
erasure that changed every UNet weight (``scope: full``) is fingerprinted on the first other
component it left unchanged: the text encoder(s), then the VAE (which no erasure changes). A
component two models share cannot tell them apart: SD 1.4 and 1.5 share both. Those components
may be held in bf16 (a GPU's frozen parts), whose values round to other fp16 bytes than the fp32
file's, so their fingerprint also records a few values, and a hash that differs is accepted when
those values agree to bf16's precision (a fine-tune that moved them by less passes too).

    fp = base_fingerprint(pipe, exclude=result.tensors)        # {"unet": {"tensors": [...], "sha256": "..."}}
    check_base(pipe, fp, source="no-star.safetensors")         # EraseError if pipe is another model
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import torch

from erase.errors import EraseError

__all__ = ["base_fingerprint", "check_base", "parse_fingerprint", "N_TENSORS"]

N_TENSORS = 4
N_SAMPLES = 16  # values per tensor recorded by a fingerprint taken outside the UNet
SAMPLE_RTOL = 2**-7  # bf16's relative precision (8 significant bits), with room
# the components a fingerprint may be taken from, in the order they are tried
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")


def _digest(params: Mapping[str, torch.Tensor], names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        t = params[name].detach().to("cpu", torch.float16).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def base_fingerprint(pipe, exclude: Iterable[str] = (), n: int = N_TENSORS) -> dict:
    """{'unet': {'tensors': names, 'sha256': hex}} of ``pipe``'s UNet, from ``n`` weight tensors
    (2-D or more) spread evenly over its parameters, none of them in ``exclude`` (keys as
    ErasureResult.tensors: the tensors an erasure changed). Where the erasure changed all of
    them, the same from the first of the text encoder(s) and the VAE that has unchanged ones."""
    from erase.api import split_name

    skip = {split_name(k) for k in exclude}
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        params = dict(module.named_parameters())
        candidates = [k for k, p in params.items() if p.ndim >= 2 and (component, k) not in skip]
        if candidates:
            n = min(n, len(candidates))
            picks = sorted({round(i * (len(candidates) - 1) / max(n - 1, 1)) for i in range(n)})
            names = [candidates[i] for i in picks]
            fp = {"tensors": names, "sha256": _digest(params, names)}
            if component != "unet":  # possibly held in half precision: see the module docstring
                fp["samples"] = _samples(params, names)
            return {component: fp}
    raise EraseError("the model has no unchanged weight tensors to fingerprint")


def _samples(params: Mapping[str, torch.Tensor], names: list[str]) -> list[list[float]]:
    return [params[n].detach().flatten()[:N_SAMPLES].float().cpu().tolist() for n in names]


def _samples_agree(recorded, params: Mapping[str, torch.Tensor], names: list[str]) -> bool:
    """The recorded values equal ``params``' to bf16's precision (the same weights held in another precision)."""
    if not isinstance(recorded, list) or len(recorded) != len(names):
        return False
    got = _samples(params, names)
    try:
        want = torch.tensor(recorded, dtype=torch.float32)
    except (TypeError, ValueError):
        return False
    have = torch.tensor(got, dtype=torch.float32)
    return want.shape == have.shape and bool(torch.allclose(have, want, rtol=SAMPLE_RTOL, atol=1e-6))


def _component(fp: dict) -> str:
    """The component a parsed fingerprint was taken from."""
    return next(c for c in COMPONENTS if c in fp)


def parse_fingerprint(value) -> dict | None:
    """A fingerprint from metadata (a JSON string or a dict); None if absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    part = next((value[c] for c in COMPONENTS if c in value), None)
    if not isinstance(part, dict) or not isinstance(part.get("tensors"), list) or not isinstance(part.get("sha256"), str):
        return None
    return value


def check_base(pipe, recorded, source: str = "the file", base_model: str | None = None) -> None:
    """EraseError (one line) unless ``pipe`` has the recorded fingerprint (on the component it names); no record: no check."""
    fp = parse_fingerprint(recorded)
    if fp is None:
        return
    component = _component(fp)
    names, label = fp[component]["tensors"], "UNet" if component == "unet" else component
    made_for = f" (base model {base_model!r})" if base_model else ""
    module = getattr(pipe, component, None)
    if module is None:
        raise EraseError(f"{source} was made for another base model{made_for}: this pipeline has no {component}")
    params = dict(module.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise EraseError(f"{source} was made for another base model{made_for}: this {label} has no tensor {missing[0]!r}")
    got = _digest(params, names)
    if got != fp[component]["sha256"] and not (
        component != "unet" and _samples_agree(fp[component].get("samples"), params, names)
    ):
        raise EraseError(
            f"{source} was made for another base model{made_for}: its {label} fingerprint is {fp[component]['sha256'][:12]}, "
            f"this model's is {got[:12]} (load the model it was made from, or pass check_base=False to apply it anyway)"
        )
