"""A fingerprint of a base model's UNet, recorded in deltas and LoRAs and checked when they are loaded.

A delta or LoRA only makes sense on the model it was made from; names and shapes catch another
architecture, the fingerprint catches another model of the same architecture (SD 1.4 vs 1.5, a
community fine-tune). It is the SHA-256 of a few UNet tensors spread over the network, rounded to
fp16 first so that the fp16 and fp32 files of one model agree. Tensors the erasure changed are
never among them, so the fingerprint is the same whether or not the erasure is applied.

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


def _unet_name(key: str) -> str | None:
    from erase.api import split_name

    component, name = split_name(key)
    return name if component == "unet" else None


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
    ErasureResult.tensors: the tensors an erasure changed)."""
    skip = {_unet_name(k) for k in exclude} - {None}
    params = dict(pipe.unet.named_parameters())
    candidates = [k for k, p in params.items() if p.ndim >= 2 and k not in skip]
    if not candidates:
        raise EraseError("the UNet has no unchanged weight tensors to fingerprint")
    n = min(n, len(candidates))
    picks = sorted({round(i * (len(candidates) - 1) / max(n - 1, 1)) for i in range(n)})
    names = [candidates[i] for i in picks]
    return {"unet": {"tensors": names, "sha256": _digest(params, names)}}


def parse_fingerprint(value) -> dict | None:
    """A fingerprint from metadata (a JSON string or a dict); None if absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    unet = value.get("unet") if isinstance(value, dict) else None
    if not isinstance(unet, dict) or not isinstance(unet.get("tensors"), list) or not isinstance(unet.get("sha256"), str):
        return None
    return value


def check_base(pipe, recorded, source: str = "the file", base_model: str | None = None) -> None:
    """EraseError (one line) unless ``pipe``'s UNet has the recorded fingerprint; no record: no check."""
    fp = parse_fingerprint(recorded)
    if fp is None:
        return
    names = fp["unet"]["tensors"]
    params = dict(pipe.unet.named_parameters())
    made_for = f" (base model {base_model!r})" if base_model else ""
    missing = [n for n in names if n not in params]
    if missing:
        raise EraseError(f"{source} was made for another base model{made_for}: this UNet has no tensor {missing[0]!r}")
    got = _digest(params, names)
    if got != fp["unet"]["sha256"]:
        raise EraseError(
            f"{source} was made for another base model{made_for}: its UNet fingerprint is {fp['unet']['sha256'][:12]}, "
            f"this model's is {got[:12]} (load the model it was made from, or pass check_base=False to apply it anyway)"
        )
