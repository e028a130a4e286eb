"""``original_config`` / ``--original-config``: the sizes a checkpoint's tensors do not determine, from its LDM yaml."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from zero123.cli import main
from zero123.errors import CheckpointError
from zero123.loading import load_model, save_pretrained
from zero123.models.configs import sd_unet_config

TOL = 1e-5


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def bare(fixtures_dir, tmp_path_factory):
    """The tiny checkpoint with no sidecar JSON beside it (2 heads, 32 px: not the released sizes), its yaml."""
    d = tmp_path_factory.mktemp("bare")
    shutil.copy(fixtures_dir / "tiny_zero123_ldm.ckpt", d / "tiny.ckpt")
    return d / "tiny.ckpt", fixtures_dir / "threestudio_sds" / "sd-objaverse-finetune-c_concat-tiny.yaml"


def _yaml_with(tmp_path, yaml_path, unet=None, vae=None):
    data = yaml.safe_load(yaml_path.read_text())
    data["model"]["params"]["unet_config"]["params"].update(unet or {})
    data["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(vae or {})
    out = tmp_path / "changed.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_without_the_yaml_the_guessed_sizes_are_marked_assumed(bare, capsys):
    ckpt, _ = bare
    model, report = load_model(ckpt, return_report=True)
    assert model.image_size == 256 and model.unet.config.attention_head_dim == 8  # the released defaults
    sizes = report.extra["sizes_from"]
    assert sizes["unet.num_heads"].startswith("assumed") and sizes["image_size"].startswith("assumed")
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "unet.num_heads" in out and "assumed (8, as released)" in out and "assumed (256, as released)" in out


@torch.no_grad()
def test_with_the_yaml_the_reference_outputs(bare, fixtures_dir):
    ckpt, yaml_path = bare
    model, report = load_model(ckpt, original_config=yaml_path, return_report=True)
    assert model.image_size == 32 and model.unet.config.attention_head_dim == 2
    assert report.extra["sizes_from"]["unet.num_heads"] == f"read from {yaml_path}"
    ref = load_file(str(fixtures_dir / "tiny_zero123_ref.safetensors"))
    from zero123.pipelines.zero123_pipeline import Zero123Pipeline

    latents = Zero123Pipeline(model).sample(ref["input_image"], ref["camera_T"], num_inference_steps=10,
                                            guidance_scale=3.0, latents=ref["ddim_x_T"])
    assert _rel(latents, ref["ddim_latents"]) < TOL
    assert _rel(((model.decode_latents(latents) + 1) / 2).clamp(0, 1), ref["ddim_image"]) < TOL
    assert not any(v.startswith("assumed") for k, v in report.extra["sizes_from"].items() if k != "clip.num_heads")


@torch.no_grad()
def test_non_default_heads_and_image_size_from_the_yaml(bare, tmp_path):
    ckpt, yaml_path = bare
    changed = _yaml_with(tmp_path, yaml_path, unet={"num_heads": 4}, vae={"resolution": 64})
    model = load_model(ckpt, original_config=changed)
    assert model.unet.config.attention_head_dim == 4 and model.image_size == 64
    # the same weights in a UNet built directly from those sizes give the same eps; 2 heads give another
    from diffusers import UNet2DConditionModel

    built = UNet2DConditionModel(**sd_unet_config(model_channels=32, channel_mult=(1, 2, 2), attention_levels=(0, 1),
                                                  num_res_blocks=1, num_heads=4, sample_size=16)).eval()
    built.load_state_dict(model.unet.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=gen)
    token, concat = torch.randn(1, 1, 768, generator=gen), torch.randn(1, 4, 16, 16, generator=gen)
    eps = model.predict_noise(x, torch.tensor([500]), token, concat)
    assert torch.allclose(eps, built(torch.cat([x, concat], 1), torch.tensor([500]), token).sample, atol=1e-6)
    two = load_model(ckpt, original_config=_yaml_with(tmp_path, yaml_path, vae={"resolution": 64}))
    assert _rel(two.predict_noise(x, torch.tensor([500]), token, concat), eps) > 1e-3


def test_bad_yaml_or_sizes_are_one_line_errors(bare, tmp_path, tiny_model):
    ckpt, yaml_path = bare
    with pytest.raises(CheckpointError, match="says unet model_channels = 64, the checkpoint's tensors have 32"):
        load_model(ckpt, original_config=_yaml_with(tmp_path, yaml_path, unet={"model_channels": 64}))
    with pytest.raises(CheckpointError, match="UNet width 32 does not split into 3 attention heads"):
        load_model(ckpt, original_config=_yaml_with(tmp_path, yaml_path, unet={"num_heads": 3}))
    (tmp_path / "notldm.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointError, match="is not an LDM config"):
        load_model(ckpt, original_config=tmp_path / "notldm.yaml")
    with pytest.raises(CheckpointError, match="applies to single-file checkpoints"):
        load_model(save_pretrained(tiny_model, tmp_path / "folder"), original_config=yaml_path)
    # a sidecar whose heads cannot fit names --original-config; an unknown sidecar field warns
    side = tmp_path / "side"
    side.mkdir()
    shutil.copy(ckpt, side / "tiny.ckpt")
    (side / "tiny.json").write_text(json.dumps({"sizes": {"unet": {"num_heads": 3}}}))
    with pytest.raises(CheckpointError, match="pass the checkpoint's LDM yaml with --original-config"):
        load_model(side / "tiny.ckpt")
    (side / "tiny.json").write_text(json.dumps({"sizes": {"unet": {"num_heads": 2}}, "heads": 2}))
    with pytest.warns(UserWarning, match="unknown field.*heads"):
        load_model(side / "tiny.ckpt")
