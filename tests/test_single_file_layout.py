"""The single-file key map on real SD 1.5 / 2.x shapes (built on the meta device: no weights)."""

import pytest
import torch


def _sd_unet(**kw):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(sample_size=64, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(cross_attention_dim=768, attention_head_dim=8),  # SD 1.x
        dict(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True),  # SD 2.x
    ],
)
def test_unet_keys_round_trip_through_diffusers_converter(kw):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from erase.single_file import unet_to_ldm

    unet = _sd_unet(**kw)
    ldm = unet_to_ldm(unet)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in ldm
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm  # first up block's upsampler
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in ldm  # upsampler after attention
    back = convert_ldm_unet_checkpoint(ldm, unet.config)
    ours = unet.state_dict()
    assert set(back) == set(ours)
    assert all(back[k].shape == ours[k].shape for k in ours)


def test_vae_keys_round_trip_through_diffusers_converter():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from erase.single_file import vae_to_ldm

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
    ldm = vae_to_ldm(vae)
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    back = convert_ldm_vae_checkpoint(ldm, vae.config)
    ours = vae.state_dict()
    assert set(back) == set(ours)
    assert all(back[k].numel() == ours[k].numel() for k in ours)
