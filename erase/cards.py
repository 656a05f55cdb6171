"""Model cards (README.md with the Hub's YAML front matter) for exported models and LoRAs.

    text = model_card(result, kind="model", scores={"star": {"UA": 1.0, "IRA": 0.98, "CRA": 0.97}})
    write_card(folder, text)

The front matter follows the Hub's conventions, so ``huggingface_hub`` pushes the folder as it is:
``base_model`` (only when the base is a Hub id; a local path would be refused by the Hub) with
``base_model_relation`` ('finetune' for the merged model, 'adapter' for a LoRA),
``library_name: diffusers``, ``pipeline_tag: text-to-image``, ``tags`` (``concept-erasure``,
the method, ``lora`` for LoRAs, the family: ``stable-diffusion``, or ``stable-diffusion-xl`` and
``stable-diffusion-xl-diffusers`` for SDXL), ``erased_concepts``, an ``erase`` block with the method, the
settings, the base model as given and its UNet fingerprint, and the measured UA / IRA / CRA as
``model-index`` results where they are known. The body says how to load it and warns that a
delta or LoRA reveals which weights the erasure changed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["model_card", "write_card", "hub_base_model", "family_tags", "pipeline_class", "REVEAL_NOTE"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SCORE_NAMES = {"UA": "unlearning accuracy (erased)", "IRA": "in-domain retain accuracy", "CRA": "cross-domain retain accuracy",
               "UA_heldout": "UA on held-out phrasings"}

REVEAL_NOTE = ("A delta or LoRA of an erasure shows exactly which weights the erasure changed and by how much, and "
               "published work uses such differences to bring erased concepts back. When that matters, ship the merged "
               "model only, and keep the delta and the LoRA private.")


def hub_base_model(source: str | None) -> str | None:
    """``source`` if it is a Hub model id (owner/name) rather than a local path; else None."""
    if not source or source.startswith(("bundled:", "/", ".", "~")) or not _HUB_ID.match(source):
        return None
    return None if Path(source).exists() else source


def _settings(config: dict) -> dict:
    return {k: v for k, v in (config or {}).items() if v is not None and k != "templates"}


def family_tags(family: str | None) -> list[str]:
    """The Hub's tags for the model family ('sdxl': stable-diffusion-xl; else stable-diffusion)."""
    return ["stable-diffusion-xl", "stable-diffusion-xl-diffusers"] if family == "sdxl" else ["stable-diffusion"]


def pipeline_class(family: str | None) -> str:
    """The diffusers pipeline class that loads the model, for the card's code."""
    return "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"


def _front_matter(result, kind: str, scores, fingerprint, lora, family=None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    from erase import __version__

    base = hub_base_model(result.base_model)
    tags = ["concept-erasure", "erase", result.method, *family_tags(family), "text-to-image", "diffusers"]
    if kind == "lora":
        tags.insert(3, "lora")
    block = {"method": result.method, "concepts": list(result.concepts), "base_model": result.base_model,
             "settings": json.loads(json.dumps(_settings(result.config), default=str)), "version": __version__}
    if fingerprint:
        block["base_fingerprint"] = fingerprint
    if lora:
        block["lora"] = {k: lora[k] for k in ("rank", "max_rank", "files", "left_out") if k in lora}
    evals = []
    for concept, s in (scores or {}).items():
        for metric in ("UA", "IRA", "CRA", "UA_heldout"):
            if s.get(metric) is not None:
                evals.append(EvalResult(task_type="text-to-image", task_name="concept erasure", dataset_type="erase-toyworld",
                                        dataset_name="erase toy world (judge)", metric_type=metric,
                                        metric_value=round(100 * float(s[metric]), 1),
                                        metric_name=f"{metric} % '{concept}' ({SCORE_NAMES[metric]})"))
    slug = "-".join(re.sub(r"[^A-Za-z0-9]+", "_", c).strip("_").lower() for c in result.concepts)
    name = f"erase-{slug}-{result.method}" + ("-lora" if kind == "lora" else "")
    data = ModelCardData(
        base_model=base, library_name="diffusers", pipeline_tag="text-to-image", tags=tags,
        model_name=name if evals else None, eval_results=evals or None,
        base_model_relation=("adapter" if kind == "lora" else "finetune") if base else None,
        erased_concepts=list(result.concepts), erase=block,
    )
    return data.to_yaml()


def _scores_table(scores) -> list[str]:
    if not scores:
        return []
    lines = ["## Measured erasure", "", "Judge scores on the bundled toy world (every shape × colour × style prompt): UA = "
             "the concept is no longer drawn (higher = more forgotten), IRA / CRA = the other concepts of its kind / of the "
             "other kinds are still drawn (higher = more kept).", "", "| concept | UA % | IRA % | CRA % | UA held-out % |",
             "|---|---|---|---|---|"]
    fmt = lambda x: "–" if x is None else f"{100 * float(x):.0f}"  # noqa: E731
    for c, s in scores.items():
        lines.append(f"| {c} | {fmt(s.get('UA'))} | {fmt(s.get('IRA'))} | {fmt(s.get('CRA'))} | {fmt(s.get('UA_heldout'))} |")
    return lines + [""]


def model_card(result, *, kind: str = "model", scores: dict | None = None, fingerprint: dict | None = None,
               lora: dict | None = None, family: str | None = None) -> str:
    """README.md text for an exported erased model (``kind='model'``: a diffusers folder) or a LoRA
    folder (``kind='lora'``; ``lora``: its rank, files and left-out tensors, as ``export_lora_folder``
    reports them). ``scores``: {concept: {'UA': share, 'IRA': …, 'CRA': …, 'UA_heldout': …}}.
    ``family``: the base model's ('sd1', 'sd2', 'sdxl', …; erase.lora.base_family), for the tags
    and the pipeline class in the code."""
    if kind not in ("model", "lora"):
        raise ValueError(f"kind must be 'model' or 'lora', got {kind!r}")
    concepts = ", ".join(f"'{c}'" for c in result.concepts)
    base = hub_base_model(result.base_model)
    base_text = f"[`{base}`](https://huggingface.co/{base})" if base else f"`{result.base_model}`"
    body = ["---", _front_matter(result, kind, scores, fingerprint, lora, family).rstrip(), "---", ""]
    cls = pipeline_class(family)
    kind_of = "SDXL" if family == "sdxl" else "Stable Diffusion"
    if kind == "model":
        body += [f"# {result.base_model.split('/')[-1]} without {concepts}", "",
                 f"{base_text} with {concepts} erased by **{result.method}** (erase, a concept-erasure "
                 f"toolkit). This folder is the merged model: load it as any {kind_of} pipeline.", "",
                 "```python", f"from diffusers import {cls}", "",
                 f'pipe = {cls}.from_pretrained("<this folder or repo>")', "```", ""]
    else:
        files = (lora or {}).get("files", {})
        kohya = files.get("kohya", "erase-….safetensors")
        body += [f"# LoRA: {concepts} erased from {result.base_model.split('/')[-1]}", "",
                 f"The erasure of {concepts} from {base_text} by **{result.method}**, as a LoRA: the difference of every "
                 f"changed weight, factorised to rank {(lora or {}).get('rank', '?')} (truncated SVD). Apply it at strength "
                 "1.0 to the base model it was made from; other strengths erase partly, or overshoot.", "",
                 "- diffusers: `pytorch_lora_weights.safetensors` (PEFT layout)", "", "  ```python",
                 f"  from diffusers import {cls}", "",
                 f'  pipe = {cls}.from_pretrained("{base or "<the base model>"}")',
                 '  pipe.load_lora_weights("<this folder or repo>")   # pipe.fuse_lora() to merge it', "  ```", "",
                 f"- AUTOMATIC1111 / Forge: `{kohya}` (kohya layout) into `models/Lora`, then `<lora:{Path(kohya).stem}:1>` in the prompt.",
                 f"- ComfyUI: `{kohya}` into `models/loras`, a LoraLoader at strength 1.0.", ""]
        left = (lora or {}).get("left_out") or []
        if left:
            body += [f"Not in the LoRA: {len(left)} changed tensor(s) that are biases or norm weights (a LoRA carries "
                     f"Linear and Conv2d weights only), e.g. `{left[0]}`. The merged model or the delta has them.", ""]
        err = (lora or {}).get("relative_error_max")
        if err is not None:
            body += [f"Largest relative error of a factorised weight difference: {err:.3f} (0 at full rank).", ""]
    body += _scores_table(scores)
    body += ["## Settings", "", f"Method `{result.method}` on base model `{result.base_model}`:", "", "```json",
             json.dumps(_settings(result.config), indent=2, default=str), "```", ""]
    body += ["## Before you publish", "", REVEAL_NOTE, "",
             "Erasure is measured, not guaranteed: an erased concept can come back under textual inversion, adversarial "
             "prompts or fine-tuning (the toolkit's `scripts/evaluate.py` tries those).", ""]
    return "\n".join(body)


def write_card(folder: str | Path, text: str) -> Path:
    """Write ``text`` as ``folder/README.md``."""
    path = Path(folder) / "README.md"
    path.write_text(text)
    return path
