"""Safe loading, bad inputs, and LDM -> diffusers folder -> load round trips."""

import os
import subprocess
import sys

import pytest
import torch

from zero123.errors import CheckpointError
from zero123.loading import load_model, read_state_dict, save_pretrained
from zero123.loading.ldm_checkpoint import convert_openai_clip_visual, ema_key
from zero123.pipelines.zero123_pipeline import Zero123Pipeline


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*system") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found"),
    (b"", "is empty"),
    (b"this is not a checkpoint at all", "not a PyTorch checkpoint"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "model.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_truncated_checkpoint(tmp_path, fixtures_dir):
    data = (fixtures_dir / "tiny_zero123_ldm.ckpt").read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_model(path)


def test_truncated_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(path)


def test_not_a_zero123_checkpoint(tmp_path):
    path = tmp_path / "sd.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a Zero123-family checkpoint"):
        load_model(path)


def test_safetensors_single_file_matches_ckpt(tmp_path, fixtures_dir):
    from safetensors.torch import save_file

    sd = read_state_dict(fixtures_dir / "tiny_zero123_ldm.ckpt")
    path = tmp_path / "tiny_zero123_ldm.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    (tmp_path / "tiny_zero123_ldm.json").write_text((fixtures_dir / "tiny_zero123_ldm.json").read_text())
    a = load_model(fixtures_dir / "tiny_zero123_ldm.ckpt")
    b = load_model(path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_ema_key_naming():
    assert ema_key("model.diffusion_model.input_blocks.1.1.proj_in.weight") == \
        "model_ema.diffusion_modelinput_blocks11proj_inweight"


def test_clip_conversion_splits_qkv():
    w = torch.arange(12 * 4, dtype=torch.float32).reshape(12, 4)
    visual = {"conv1.weight": torch.zeros(4, 3, 2, 2), "class_embedding": torch.zeros(4),
              "positional_embedding": torch.zeros(5, 4), "ln_pre.weight": torch.ones(4), "ln_pre.bias": torch.zeros(4),
              "ln_post.weight": torch.ones(4), "ln_post.bias": torch.zeros(4), "proj": torch.randn(4, 6)}
    for name, shape in [("attn.in_proj_weight", (12, 4)), ("attn.in_proj_bias", (12,)), ("attn.out_proj.weight", (4, 4)),
                        ("attn.out_proj.bias", (4,)), ("ln_1.weight", (4,)), ("ln_1.bias", (4,)),
                        ("mlp.c_fc.weight", (16, 4)), ("mlp.c_fc.bias", (16,)), ("mlp.c_proj.weight", (4, 16)),
                        ("mlp.c_proj.bias", (4,)), ("ln_2.weight", (4,)), ("ln_2.bias", (4,))]:
        visual[f"transformer.resblocks.0.{name}"] = torch.randn(shape)
    visual["transformer.resblocks.0.attn.in_proj_weight"] = w
    out = convert_openai_clip_visual(visual)
    assert torch.equal(out["vision_model.encoder.layers.0.self_attn.k_proj.weight"], w[4:8])
    assert torch.equal(out["visual_projection.weight"], visual["proj"].t())


@torch.no_grad()
def test_round_trip_ldm_to_diffusers_folder(tmp_path, fixtures_dir):
    src = fixtures_dir / "tiny_zero123_ldm.ckpt"
    folder = tmp_path / "converted"
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "zero123.cli", "convert", str(src), str(folder),
                             "--variant", "stable_zero123"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "cc_projection" / "config.json").is_file() and (folder / "model_index.json").is_file()
    a = load_model(src, variant="stable_zero123")
    b, report = load_model(folder, return_report=True)
    assert report.variant == "stable_zero123" and report.format == "diffusers"
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    x_t = torch.randn(2, 4, 8, 8, generator=gen)
    outs = []
    for model in (a, b):
        pipe = Zero123Pipeline(model)
        outs.append(pipe(image, [10, -5], [30, 200], num_inference_steps=5, latents=x_t, output_type="pt",
                         progress=False).images)
    assert torch.equal(outs[0], outs[1])
    # half-precision export is about half the size and still loads
    half = save_pretrained(b, tmp_path / "half", half=True)
    c = load_model(half)
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*.safetensors"))  # noqa: E731
    assert size(half) < 0.6 * size(folder)
    assert torch.allclose(c.camera_projection.projection.weight, b.camera_projection.projection.weight, atol=1e-3)


def test_published_diffusers_layout_with_bin_weights(tmp_path, tiny_model):
    """kxic folders: ``cc_projection/config.json`` without arguments, no zero123 metadata, ``.bin`` weights."""
    import json

    folder = save_pretrained(tiny_model, tmp_path / "pub")
    (folder / "zero123.json").unlink()
    cc = folder / "cc_projection"
    (cc / "config.json").write_text(json.dumps({"_class_name": "CCProjection", "_diffusers_version": "0.18.0.dev0"}))
    sd = read_state_dict(cc / "diffusion_pytorch_model.safetensors")
    (cc / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, cc / "diffusion_pytorch_model.bin")
    with pytest.warns(UserWarning, match="assuming zero123"):
        model, report = load_model(folder, return_report=True)
    assert report.variant == "zero123" and report.extra["variant_from"] == "assumed"
    assert torch.equal(model.camera_projection.projection.weight, tiny_model.camera_projection.projection.weight)


def test_folder_missing_component(tmp_path, tiny_model):
    import shutil

    folder = save_pretrained(tiny_model, tmp_path / "m")
    shutil.rmtree(folder / "vae")
    with pytest.raises(CheckpointError, match="no vae/ subfolder"):
        load_model(folder)


def test_wrong_variant_name():
    from zero123.camera import ConditioningVariant
    from zero123.errors import Zero123Error

    with pytest.raises(Zero123Error, match="unknown conditioning variant"):
        ConditioningVariant.parse("zero124")
