import json
import shutil

import pytest

from erase.errors import EraseError
from erase.models import load_pipeline


def test_loads_folder_on_cpu_in_fp32(tiny_folder):
    pipe = load_pipeline(tiny_folder)
    assert pipe.erase_info.kind == "folder"
    assert pipe.unet.dtype.is_floating_point and str(pipe.unet.dtype) == "torch.float32"
    assert pipe.erase_mixed_precision == "no" and pipe.device.type == "cpu"


@pytest.mark.parametrize(
    "model, message",
    [
        ("/no/such/folder", "model path not found"),
        ("weights.ckpt", "pickled checkpoints"),
        ("model.bin", "pickled checkpoints"),
        ("missing.safetensors", "model file not found"),
        ("some-org/not-cached-model", "no such local path"),
    ],
)
def test_bad_model_sources(model, message):
    with pytest.raises(EraseError, match=message):
        load_pipeline(model)


def test_unsupported_and_malformed_folders(tiny_folder, tmp_path):
    sdxl = tmp_path / "sdxl"
    shutil.copytree(tiny_folder, sdxl)
    index = json.loads((sdxl / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"  # an SDXL index over SD 1.x parts: its second encoder is missing
    (sdxl / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(EraseError, match="no text_encoder_2/ subfolder"):
        load_pipeline(sdxl)
    for cls in ("StableDiffusion3Pipeline", "FluxPipeline"):  # MMDiT: refused, naming what is supported
        index["_class_name"] = cls
        (sdxl / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(EraseError, match=r"transformer \(MMDiT/DiT\).*SDXL \(StableDiffusionXLPipeline\)"):
            load_pipeline(sdxl)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EraseError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(EraseError, match="not a readable safetensors"):
        load_pipeline(broken)
