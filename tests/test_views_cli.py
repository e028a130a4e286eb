"""`zero123 views` end to end on CPU with the tiny fixture checkpoint, and its one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from zero123.cli import main
from zero123.models.optimizations import optimize_for_inference


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "obj.png"
    im = Image.new("RGB", (120, 90), (250, 250, 250))
    ImageDraw.Draw(im).rectangle([30, 20, 70, 80], fill=(180, 40, 40))
    im.save(path)
    return path


def test_views_end_to_end(tmp_path, photo, fixtures_dir):
    out = tmp_path / "views"
    rc = main(["views", str(photo), "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"), "--azimuth", "30",
               "-90", "--elevation", "10", "--steps", "5", "--out", str(out)])
    assert rc == 0
    views = [Image.open(out / f"view_{i:02d}.png") for i in range(2)]
    assert all(v.size == (32, 32) for v in views)
    assert not np.array_equal(np.asarray(views[0]), np.asarray(views[1]))  # different cameras, different views
    assert Image.open(out / "grid.png").size == (3 * 32, 32)
    meta = json.loads((out / "views.json").read_text())
    assert [v["delta_azimuth"] for v in meta["views"]] == [30.0, -90.0]


@pytest.mark.parametrize("args, message", [
    (["views", "missing.png", "--out", "o"], "image not found"),
    (["views", "{photo}", "--checkpoint", "nope.ckpt", "--out", "o"], "checkpoint not found"),
    (["views", "{photo}", "--checkpoint", "{ckpt}", "--elevation", "120", "--out", "o"], "out of range"),
    (["views", "{photo}", "--checkpoint", "{ckpt}", "--radius", "5", "--out", "o"], "radius change"),
    (["views", "{photo}", "--checkpoint", "{ckpt}", "--azimuth", "1", "2", "--elevation", "1", "2", "3",
      "--out", "o"], "--azimuth has 2 values for 3 views"),
    (["views", "{ckpt}", "--checkpoint", "{ckpt}", "--out", "o"], "not a readable image"),
    (["views", "{photo}", "--checkpoint", "{ckpt}", "--noise-scale", "1.5", "--out", "o"], "noise scale must be in"),
])
def test_views_errors_are_one_line(tmp_path, photo, fixtures_dir, args, message):
    args = [a.format(photo=photo, ckpt=fixtures_dir / "tiny_zero123_ldm.ckpt") for a in args]
    res = subprocess.run([sys.executable, "-m", "zero123.cli"] + args, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("zero123: error:") and message in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr


def test_help_lists_commands():
    res = subprocess.run([sys.executable, "-m", "zero123.cli", "views", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--elevation" in res.stdout and "examples:" in res.stdout


@torch.no_grad()
def test_fast_path_matches_plain_model(tiny_model):
    import copy

    fast = optimize_for_inference(copy.deepcopy(tiny_model))
    gen = torch.Generator().manual_seed(1)
    x, tok, cc = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 1, 768, generator=gen), \
        torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([5, 500, 900])
    a, b = tiny_model.guided_noise(x, t, tok, cc, 3.0), fast.guided_noise(x, t, tok, cc, 3.0)
    assert ((a - b).norm() / a.norm()) < 1e-5


def test_noise_scale_scales_the_drawn_start_noise_and_defaults_from_sampling_json(tmp_path, tiny_model):
    """noise_scale tau: the same views as start noise tau x N(0, I) drawn from the same generator, given
    explicitly; a folder's sampling.json sets the pipeline's default; tau=1 is the standard sampler."""
    from zero123.errors import Zero123Error
    from zero123.pipelines.zero123_pipeline import SAMPLING_FILE, Zero123Pipeline

    pipe = Zero123Pipeline(tiny_model)
    assert pipe.noise_scale == 1.0
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cams = dict(elevations=[10.0, -5.0], azimuths=[40.0, 200.0], num_inference_steps=4, output_type="pt",
                progress=False)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scaled = pipe(image, generator=torch.Generator().manual_seed(3), noise_scale=0.5, **cams)
    given = pipe(image, latents=0.5 * noise, **cams)
    torch.testing.assert_close(scaled.latents, given.latents, rtol=0, atol=0)
    standard = pipe(image, generator=torch.Generator().manual_seed(3), **cams)
    torch.testing.assert_close(standard.latents, pipe(image, latents=noise, **cams).latents, rtol=0, atol=0)
    assert not torch.allclose(standard.latents, scaled.latents)
    # tau = 0: deterministic (no dependence on the generator)
    a = pipe(image, generator=torch.Generator().manual_seed(1), noise_scale=0.0, **cams).latents
    b = pipe(image, generator=torch.Generator().manual_seed(2), noise_scale=0.0, **cams).latents
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a folder's sampling.json is the default; saving a pipeline with tau != 1 writes it
    Zero123Pipeline(tiny_model, noise_scale=0.5).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / SAMPLING_FILE).read_text()) == {"noise_scale": 0.5}
    loaded = Zero123Pipeline.from_pretrained(tmp_path / "m")
    assert loaded.noise_scale == 0.5
    torch.testing.assert_close(loaded(image, generator=torch.Generator().manual_seed(3), **cams).latents,
                               scaled.latents, rtol=0, atol=1e-6)
    Zero123Pipeline(tiny_model).save_pretrained(tmp_path / "std")
    assert not (tmp_path / "std" / SAMPLING_FILE).exists()
    assert Zero123Pipeline.from_pretrained(tmp_path / "std").noise_scale == 1.0
    for bad, msg in [('{"noise_scale": -0.1}', "must be in"), ('{"tau": 1}', "expected"), ("{", "not valid JSON")]:
        (tmp_path / "m" / SAMPLING_FILE).write_text(bad)
        with pytest.raises(Zero123Error, match=msg):
            Zero123Pipeline.from_pretrained(tmp_path / "m")
    with pytest.raises(Zero123Error, match="noise scale"):
        pipe(image, noise_scale=float("nan"), **cams)
