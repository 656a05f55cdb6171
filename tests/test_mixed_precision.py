"""The GPU's dtype path on CPU: every registered method under bf16 (and fp16 where it is real) autocast.

On a GPU, training runs under autocast with fp32 master weights, and load_pipeline puts the
frozen VAE and text encoder in half precision. CPU autocast has bf16, so an explicit
``mixed_precision: bf16`` runs here (slowly, with a one-time warning) and a dtype mistake in
any method fails in CI instead of on a GPU. 'auto' stays fp32 on CPU.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from conftest import FAST_FMN, FAST_SALUN
from erase import methods
from erase.api import erase_concepts
from erase.benchmarks.gpu import smoke_overrides
from erase.errors import EraseError
from erase.models import autocast_runs_in, load_pipeline, resolve_mixed_precision

pytestmark = pytest.mark.filterwarnings("ignore:mixed_precision .* is slow:RuntimeWarning")

METHODS = methods.available()
KNOWN = {"fmn": FAST_FMN, "salun": FAST_SALUN}  # the suite's own fast settings; others derived generically
CONCEPT = "van gogh"


def fast(method: str) -> dict:
    return dict(KNOWN.get(method) or smoke_overrides(method))


def _delta(result, sizes: dict[str, int]) -> torch.Tensor:
    """The change over the tensors named in ``sizes`` (zeros for one this result did not change)."""
    return torch.cat([(result.tensors[n] - result.original[n]).flatten() if n in result.tensors else torch.zeros(k)
                      for n, k in sorted(sizes.items())])


@pytest.fixture(scope="module")
def fp32_runs(tiny_folder):
    """The fp32 result of each method with its fast settings (computed once, on demand)."""
    cache: dict = {}

    def get(method: str):
        if method not in cache:
            cache[method] = erase_concepts(load_pipeline(tiny_folder), CONCEPT, method, dict(fast(method), mixed_precision="no"))
        return cache[method]

    return get


def _check_result(pipe, result, reference, frozen_dtype: torch.dtype) -> None:
    # the UNet keeps fp32 master weights, all finite; the frozen parts keep their dtype
    for n, p in pipe.unet.named_parameters():
        assert p.dtype == torch.float32, f"UNet tensor {n} is {p.dtype} after the run"
        assert torch.isfinite(p).all(), f"UNet tensor {n} has non-finite values"
    assert pipe.text_encoder.dtype == frozen_dtype and pipe.vae.dtype == frozen_dtype
    # the change: fp32, finite, something moved
    assert result.tensors, "nothing changed"
    for n, t in result.tensors.items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), f"changed tensor {n}: {t.dtype}, finite {bool(torch.isfinite(t).all())}"
    assert any(not torch.equal(result.tensors[n], result.original[n]) for n in result.tensors)
    for k, v in result.stats.items():
        if "loss" in k and isinstance(v, float):
            assert v == v and abs(v) != float("inf"), f"stat {k} is {v}"
    # close to the fp32 run: the same tensors change (a saliency mask may pick a boundary tensor
    # differently when the generated data differ by rounding), in nearly the same direction
    mine, ref = set(result.tensors), set(reference.tensors)
    assert len(mine & ref) >= 0.9 * len(mine | ref), f"changed tensors differ: {sorted(mine ^ ref)}"
    sizes = {n: t.numel() for r in (result, reference) for n, t in r.tensors.items()}
    cos = torch.nn.functional.cosine_similarity(_delta(result, sizes), _delta(reference, sizes), dim=0)
    assert cos > 0.8, f"the change under half precision points elsewhere than in fp32 (cosine {float(cos):.3f})"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_under_half_precision_autocast(tiny_pipe, fp32_runs, monkeypatch, method, precision):
    if not autocast_runs_in(precision, "cpu"):
        pytest.skip(f"autocast does not run {precision} on CPU here (test_impossible_precision_is_refused covers it)")
    import erase.training

    used = []
    real = erase.training.make_accelerator
    monkeypatch.setattr(erase.training, "make_accelerator", lambda mp, dev: used.append(mp) or real(mp, dev))
    result = erase_concepts(tiny_pipe, CONCEPT, method, dict(fast(method), mixed_precision=precision))
    assert all(mp == precision for mp in used), f"{method} trained under {used}, not {precision}"
    _check_result(tiny_pipe, result, fp32_runs(method), torch.float32)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_pipeline_loaded_as_on_a_gpu(tiny_folder, fp32_runs, method):
    """load_pipeline(mixed_precision='bf16'): frozen VAE/text encoder in bf16, 'auto' follows the pipeline."""
    pipe = load_pipeline(tiny_folder, device="cpu", mixed_precision="bf16")
    assert pipe.erase_mixed_precision == "bf16" and pipe.text_encoder.dtype == torch.bfloat16
    result = erase_concepts(pipe, CONCEPT, method, fast(method))
    assert result.config["mixed_precision"] == "auto"
    _check_result(pipe, result, fp32_runs(method), torch.bfloat16)


def test_auto_stays_fp32_on_cpu(tiny_pipe):
    assert tiny_pipe.erase_mixed_precision == "no"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("auto", "cpu") == "no"
        assert resolve_mixed_precision("auto", "cpu", loaded="no") == "no"
        assert resolve_mixed_precision(None, "cpu") == "no"
        assert resolve_mixed_precision("no", "cpu") == "no"


def test_explicit_bf16_on_cpu_warns_once(monkeypatch):
    import erase.models

    monkeypatch.setattr(erase.models, "_SLOW_WARNED", set())
    with pytest.warns(RuntimeWarning, match="slow"):
        assert resolve_mixed_precision("bf16", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("bf16", "cpu") == "bf16"
        assert resolve_mixed_precision("auto", "cpu", loaded="bf16") == "bf16"


def test_impossible_precision_is_refused(tiny_folder, tiny_pipe):
    """A half precision that autocast would not really run here (fp16 on CPU with accelerate 1.x) is a clear error."""
    impossible = [p for p in ("fp16", "bf16") if not autocast_runs_in(p, "cpu")]
    if not impossible:
        pytest.skip("autocast runs both half precisions on this CPU")
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    for precision in impossible:
        with pytest.raises(EraseError, match=rf"mixed_precision '{precision}' is not possible on cpu"):
            erase_concepts(tiny_pipe, CONCEPT, "fmn", dict(FAST_FMN, mixed_precision=precision))
        with pytest.raises(EraseError, match="not possible on cpu"):
            load_pipeline(tiny_folder, device="cpu", mixed_precision=precision)
    assert all(torch.equal(before[n], p) for n, p in tiny_pipe.unet.named_parameters())


def test_unknown_precision_is_refused():
    with pytest.raises(EraseError, match="mixed_precision must be"):
        resolve_mixed_precision("fp8", "cpu")


def test_fast_settings_cover_every_method():
    """Each method's fast settings are valid and small (a new method gets them from its fields)."""
    for method in METHODS:
        cfg = methods.make_config(method, fast(method))
        values = dataclasses.asdict(cfg)
        for field in ("steps", "iterations", "n_forget_images", "n_retain_images", "generation_steps", "ddim_steps"):
            if field in values:
                assert values[field] <= 4, f"{method}.{field} = {values[field]} in the fast settings"
        assert values.get("epochs", 1) <= 1
