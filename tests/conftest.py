import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny random SD pipeline saved as a diffusers folder (seeded)."""
    from erase.synthetic import save_pipeline_folder

    return save_pipeline_folder("tiny", tmp_path_factory.mktemp("tiny") / "pipe", seed=0)


@pytest.fixture()
def tiny_pipe(tiny_folder):
    """A fresh pipeline loaded through the ordinary loader (each test may change it)."""
    from erase.models import load_pipeline

    return load_pipeline(tiny_folder)


FAST_FMN = dict(steps=4, lr=1e-3, n_forget_images=2, generation_steps=2, batch_size=2)
FAST_SALUN = dict(epochs=1, lr=1e-3, n_forget_images=4, n_retain_images=4, generation_steps=2, batch_size=2)


def images_equal(a, b) -> bool:
    import numpy as np

    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def free_port() -> int:
    """A free TCP port on the loopback interface (for the app's tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundled_available() -> bool:
    """Whether the bundled toy-world weights are present and intact."""
    from erase.errors import EraseError
    from erase.toyworld import default_model_path

    try:
        default_model_path()
        return True
    except EraseError:
        return False
