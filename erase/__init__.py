"""erase: make trained models forget.

    from erase import load_pipeline, erase_concepts, export_delta
    pipe = load_pipeline()                                  # bundled toy-world model
    result = erase_concepts(pipe, ["circle"], method="uce")
    export_delta(result, "no-circle.safetensors")

The names below are imported lazily, so ``import erase.saliency`` (for example) stays light.
"""

__version__ = "0.1.0"

_API = {
    "load_pipeline": "erase.models",
    "erase_concepts": "erase.api",
    "ErasureResult": "erase.api",
    "export_diffusers": "erase.export",
    "export_delta": "erase.export",
    "load_delta": "erase.export",
    "apply_delta": "erase.export",
    "export_single_file": "erase.export",
    "export_lora": "erase.lora",
    "load_erasure": "erase.reload",
    "generate": "erase.evaluation",
    "compare": "erase.evaluation",
    "attention_heatmap": "erase.evaluation",
    "EraseError": "erase.errors",
    "Cancelled": "erase.training",
    "available_methods": "erase.methods",
    "evaluate": "erase.robustness",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        module = importlib.import_module(_API[name])
        return getattr(module, "available" if name == "available_methods" else name)
    raise AttributeError(f"module 'erase' has no attribute {name!r}")
