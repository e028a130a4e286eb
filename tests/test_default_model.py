"""The model bundled with the package (``zero123/assets/default_model``): it loads with no checkpoint given, has
the documented sizes, and runs `zero123 views` / presets on the CPU."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zero123.cli import main
from zero123.loading import bundled_model_path, load_model
from zero123.pipelines.image_to_3d_config import auto_preset, preset_config


@pytest.fixture(scope="module")
def bundled():
    return load_model(None)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_bundled_model_is_the_documented_small_model(bundled):
    assert bundled.variant.value == "zero123" and bundled.image_size == 128
    assert bundled.unet.config.sample_size == 32 and bundled.unet.config.in_channels == 8
    assert round(_params(bundled.unet) / 1e6, 1) == 10.4
    assert round(_params(bundled.vae) / 1e6, 1) == 2.7
    assert round(_params(bundled.image_encoder) / 1e6, 1) == 2.0
    # fp16 on disk, at most ~30 MB in all; loaded as float32 on the CPU
    size = sum(f.stat().st_size for f in bundled_model_path().rglob("*.safetensors"))
    assert 25e6 < size < 32e6, size
    assert all(p.dtype == torch.float32 for p in bundled.parameters())
    assert all(torch.isfinite(p).all() for p in bundled.parameters())
    card = (bundled_model_path() / "README.md").read_text()
    assert "zero123 eval" in card and "PSNR" in card
    assert bundled.bundled  # load_model marks it: to3d's `--preset auto` picks the `bundled` preset on a GPU by it


def test_views_without_checkpoint_uses_the_bundled_model(tmp_path):
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[20:76, 30:66] = (200, 60, 40, 255)
    Image.fromarray(rgba).save(tmp_path / "obj.png")
    out = tmp_path / "views"
    assert main(["views", str(tmp_path / "obj.png"), "--azimuth", "90", "180", "--steps", "4", "--out", str(out)]) == 0
    views = [np.asarray(Image.open(out / f"view_{i:02d}.png")) for i in range(2)]
    assert views[0].shape == (128, 128, 3)
    assert not np.array_equal(views[0], views[1])
    meta = json.loads((out / "views.json").read_text())
    # the bundled folder's sampling.json: low-temperature sampling, chosen on validation pairs (model card)
    assert meta["checkpoint"] == "bundled" and meta["noise_scale"] == 0.5


def test_auto_preset_follows_the_device():
    assert auto_preset("cpu") == "cpu" and auto_preset("cuda:0") == "default"
    assert preset_config("auto", device="cpu").preset == "cpu"
    assert preset_config("auto", device="cuda").preset == "default"
    assert auto_preset("cuda:0", bundled=True) == "bundled" and auto_preset("cpu", bundled=True) == "cpu"
    cpu = preset_config("cpu")
    assert cpu.steps == 200 and cpu.cameras.resolutions == (32, 64)
    assert preset_config("default").steps == 600


def test_to3d_without_checkpoint_runs_the_cpu_preset_with_the_bundled_model(tmp_path):
    import trimesh

    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[24:72, 34:62] = (40, 160, 60, 255)
    rgba[40:56, 28:34] = (30, 40, 200, 255)
    Image.fromarray(rgba).save(tmp_path / "obj.png")
    out = tmp_path / "obj3d"
    # the cpu preset chosen by `auto` on a CPU, compressed to 6 steps (its schedules follow)
    assert main(["to3d", str(tmp_path / "obj.png"), "--out", str(out), "--steps", "6", "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 6
    # no elevation given: the CLI estimated it with the bundled model and recorded the estimate
    assert result["input_elevation"] == result["elevation_estimate"]["degrees"]
    mesh = trimesh.load(out / "model.glb", force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.faces) <= preset_config("cpu").export.max_faces
    from zero123.pipelines.image_to_3d import load_checkpoint

    assert load_checkpoint(out)["config"]["preset"] == "cpu"
