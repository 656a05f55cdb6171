"""Small torch classifiers, a seeded training loop, prediction helpers and safetensors I/O.

The unlearning methods accept any ``nn.Module`` mapping a float batch ``(B, d)`` to logits
``(B, K)`` whose last ``nn.Linear`` is the classification head; the MLP here is the bundled
default (it trains on digits in about a second on one CPU thread).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from erase.classifier.options import COUNT, NON_NEGATIVE, POSITIVE, check
from erase.errors import EraseError


class MLP(nn.Module):
    """``in -> hidden -> ReLU -> ... -> n_classes`` (the last layer is the head ``self.head``)."""

    def __init__(self, in_features: int, n_classes: int, hidden: tuple[int, ...] = (128,)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, n_classes)
        self.config = {"in_features": in_features, "n_classes": n_classes, "hidden": list(hidden)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1) if x.dim() > 2 else x))


def mlp_factory(in_features: int, n_classes: int, hidden: tuple[int, ...] = (128,)) -> Callable[[], MLP]:
    """A buildable (and recordable) factory of MLPs: an :class:`~erase.classifier.archs.Arch`."""
    from erase.classifier.archs import Arch

    return Arch("mlp", {"in_features": int(in_features), "n_classes": int(n_classes), "hidden": [int(h) for h in hidden]})


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with weights drawn from ``seed`` without touching the global RNG state."""
    from erase.classifier.archs import Arch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    if isinstance(factory, Arch):
        model.erase_arch = factory  # how to rebuild it (saved with the weights)
    return model


@dataclass
class TrainConfig:
    """Plain supervised training (the original model, retraining, SISA constituents)."""

    epochs: int = field(default=30, metadata={"help": "passes over the training data"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})

    def __post_init__(self):
        check(self, {"epochs": COUNT, "lr": POSITIVE, "batch_size": COUNT, "weight_decay": NON_NEGATIVE})


def _as_tensor(x) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).contiguous()


def train_classifier(model: nn.Module, X, y, config: TrainConfig | None = None, seed: int = 0) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy; shuffling is drawn from ``seed`` only."""
    cfg = config or TrainConfig()
    X = _as_tensor(X).float()
    y = _as_tensor(y).long()
    n = len(y)
    if n == 0:
        return model
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            if len(b) == 1 and n > 1:  # a batch of one breaks batch norm; its sample is seen next epoch
                continue
            opt.zero_grad(set_to_none=True)
            loss_fn(model(X[b]), y[b]).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict_proba(model: nn.Module, X, batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities as a numpy array (evaluation mode)."""
    was_training = model.training
    model.eval()
    X = _as_tensor(X).float()
    out = [torch.softmax(model(X[s : s + batch_size]), dim=1) for s in range(0, len(X), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def head_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The classification head: the ``nn.Linear`` named ``name``, else the last one in the module tree."""
    if name is not None:
        module = dict(model.named_modules()).get(name)
        if module is None:
            raise EraseError(f"{type(model).__name__} has no module named {name!r} (the head given)")
        if not isinstance(module, nn.Linear):
            raise EraseError(f"the head {name!r} of {type(model).__name__} is a {type(module).__name__}, not an nn.Linear")
        return name, module
    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (n, m)
    if last is None:
        raise EraseError(f"{type(model).__name__} has no nn.Linear head; boundary unlearning needs one")
    return last


def find_head(model: nn.Module, sample, name: str | None = None, n_classes: int | None = None) -> tuple[str, nn.Linear]:
    """The ``nn.Linear`` whose output is the model's output (checked by running ``sample`` through it).

    ``name`` picks it by its dotted name instead (still checked). With ``n_classes`` the head
    must have at least that many outputs.
    """
    x = _as_tensor(sample).float()
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: outputs.__setitem__(n, out))
             for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001 - any failure here means the inputs do not fit the model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EraseError(f"{type(model).__name__} cannot take inputs of shape {tuple(x.shape[1:])}: {first}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise EraseError(f"{type(model).__name__} returns {shape} for a batch of {x.shape[0]}; a classifier returns logits (batch, classes)")
    if name is None:
        found = [n for n, out in outputs.items() if isinstance(out, torch.Tensor) and out.shape == y.shape and torch.equal(out, y)]
        if not found:
            raise EraseError(f"cannot find the classification head of {type(model).__name__}: no nn.Linear produces its output "
                             "(name it with head=... / --head)")
        name = found[-1]
    name, head = head_layer(model, name)
    if name not in outputs or outputs[name].shape != y.shape or not torch.equal(outputs[name], y):
        raise EraseError(f"{name!r} is not the classification head of {type(model).__name__}: its output is not the model's")
    if n_classes is not None and head.out_features < n_classes:
        raise EraseError(f"the data have {n_classes} classes (labels 0..{n_classes - 1}) but the head {name!r} of "
                         f"{type(model).__name__} has {head.out_features} outputs")
    return name, head


def set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent = model
    *path, leaf = dotted.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, new)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Write tensors as safetensors (temp file, then rename); metadata is stored as JSON strings."""
    meta = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    return _atomic_save(tensors, Path(path), meta)


def save_model(path: str | Path, model: nn.Module, metadata: dict | None = None, arch=None) -> Path:
    """Weights as safetensors, with the architecture (an Arch) in the metadata when known."""
    meta = dict(metadata or {})
    if arch is not None:
        meta.setdefault("arch", arch.to_dict())
    if isinstance(getattr(model, "config", None), dict):
        meta.setdefault("model_config", model.config)
    meta.setdefault("model_class", type(model).__name__)
    return save_tensors(path, model.state_dict(), meta)


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def load_model(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None) -> nn.Module:
    """A classifier from a safetensors file.

    The architecture comes from the file's metadata when erase wrote it (``arch``, or an MLP's
    ``model_config``); otherwise from ``arch`` (``mlp``, ``resnet18`` or ``module:callable``), its
    arguments inferred from the weights' shapes where possible and ``arch_kwargs`` on top.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from erase.classifier.archs import Arch, arch_from_weights

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EraseError(f"{path.name}: pickled checkpoints are not loaded (they can run code); convert the state dict "
                         "to safetensors (safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))")
    if not path.is_file():
        raise EraseError(f"model file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise EraseError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    if arch is None:
        if "arch" in meta:
            spec = Arch.from_dict(json.loads(meta["arch"]))
            spec = Arch(spec.name, spec.kwargs | dict(arch_kwargs or {}))
        elif "model_config" in meta:
            spec = arch_from_weights("mlp", state, meta, arch_kwargs)
        else:
            raise EraseError(f"{path} does not say its architecture; give it (--arch resnet18|mlp|module:callable)")
    else:
        spec = arch_from_weights(arch, state, meta, arch_kwargs)
    model = spec()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise EraseError(f"the weights in {path.name} do not fit architecture {spec.name!r}: {detail}") from None
    model.erase_arch = spec  # how to rebuild it (retraining, SISA)
    return model.eval()


def config_dict(cfg) -> dict:
    return asdict(cfg)
