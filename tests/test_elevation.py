"""Input-elevation estimate (``zero123.elevation``): the scoring's geometry, the estimator, and its wiring."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from zero123.camera import camera_to_world
from zero123.elevation import (DEFAULT_CANDIDATES, MIN_TURN, PRIOR_ELEVATION, ElevationEstimate, describe,
                               estimate_elevation_from_views, estimate_input_elevation, score_elevation_candidates)
from zero123.errors import Zero123Error
from zero123.models.configs import tiny_config
from zero123.pipelines.zero123_pipeline import Zero123Pipeline


def synthetic_flow(elevation, delta_azimuth, size=64, shift=1.5, perspective=2.0, noise=0.3, seed=0):
    """Flow ``[2,S,S]`` (row, col) of the first-order model with a known elevation, plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    x, y = cols - (size - 1) / 2, (size - 1) / 2 - rows
    w = math.radians(delta_azimuth)
    vy = -w * math.sin(math.radians(elevation)) * x + perspective * x * y / size + shift
    vx = rng.normal(0, 2, (size, size))  # depth dependent: ignored by the scoring
    return np.stack([-vy + rng.normal(0, noise, vy.shape), vx])


@pytest.mark.parametrize("elevation", [-15.0, 0.0, 25.0, 60.0])
def test_scoring_finds_the_elevation_of_a_known_flow(elevation):
    mask = np.zeros((64, 64), bool)
    mask[12:52, 8:56] = True
    flows = [synthetic_flow(elevation, 30, seed=1), synthetic_flow(elevation, -30, shift=-2, seed=2)]
    scores, measured = score_elevation_candidates(flows, [mask, mask], [30, -30], DEFAULT_CANDIDATES)
    assert DEFAULT_CANDIDATES[int(np.argmin(scores))] == elevation
    assert measured == pytest.approx(math.sin(math.radians(elevation)), abs=0.02)
    # scores grow away from the optimum on both sides (a single valley)
    best = int(np.argmin(scores))
    assert np.all(np.diff(scores[best:]) > 0) and np.all(np.diff(scores[:best + 1]) < 0)


def test_scoring_rejects_bad_input():
    flow, mask = synthetic_flow(10, 30), np.ones((64, 64), bool)
    with pytest.raises(Zero123Error, match="one flow"):
        score_elevation_candidates([flow], [mask, mask], [30])
    with pytest.raises(Zero123Error, match="too few pixels"):
        score_elevation_candidates([flow], [np.zeros((64, 64), bool)], [30])
    with pytest.raises(Zero123Error, match="out of range"):
        score_elevation_candidates([flow], [mask], [30], candidates=[0, 120])


def test_exact_renders_order_low_and_high_viewpoints():
    """On true views of a textured object, a high viewpoint is estimated well above a low one (the flow sign and
    the geometry are right: a sign error would reverse them)."""
    from zero123.data.objects import procedural_object
    from zero123.data.render import normalize_to_unit_cube
    from zero123.rendering.mesh_rasterizer import render_mesh

    pm = normalize_to_unit_cube(procedural_object(500004))
    estimates = {}
    for elevation in (-10.0, 50.0):
        azs = torch.tensor([0.0, 20.0, -20.0], dtype=torch.float64)
        c2w = camera_to_world(torch.full((3,), elevation), azs, torch.full((3,), 1.8)).float()
        out = render_mesh(pm, c2w, 49.1, 96, light_dir=np.array([0.4, 0.3, 0.87]), ambient=0.4,
                          background=(1.0, 1.0, 1.0))
        rgb = (out["rgba"][..., :3].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        mask = out["rgba"][0, ..., 3].numpy() > 0.5
        estimates[elevation] = estimate_elevation_from_views(rgb[0], mask, [rgb[1], rgb[2]], [20.0, -20.0])
    assert all(e.method == "azimuth-parallax" and e.turn > MIN_TURN for e in estimates.values())
    assert estimates[50.0].degrees - estimates[-10.0].degrees >= 30
    assert estimates[50.0].slope > 0.4 and estimates[-10.0].slope < 0.1
    # views that copy the input carry no parallax: the estimate is the prior, and says so
    rgb0 = rgb[0]
    copy = estimate_elevation_from_views(rgb0, mask, [rgb0, rgb0], [20.0, -20.0])
    assert (copy.degrees, copy.method) == (PRIOR_ELEVATION, "prior") and copy.turn < MIN_TURN
    assert "default guess" in describe(copy) and "estimated" in describe(estimates[50.0])


@pytest.fixture(scope="module")
def stable_pipe():
    return Zero123Pipeline(tiny_config("stable_zero123").build(seed=0).eval())


def object_rgba(size=64):
    rng = np.random.default_rng(0)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[12:52, 16:48, :3] = rng.integers(0, 255, (40, 32, 3))
    rgba[12:52, 16:48, 3] = 255
    return Image.fromarray(rgba)


def test_estimator_on_the_tiny_model_returns_a_candidate_deterministically(stable_pipe):
    a = estimate_input_elevation(stable_pipe, object_rgba(), num_inference_steps=3)
    b = estimate_input_elevation(stable_pipe.model, object_rgba(), num_inference_steps=3)
    assert isinstance(a, ElevationEstimate) and a.degrees in DEFAULT_CANDIDATES
    assert a == b and len(a.scores) == len(DEFAULT_CANDIDATES)
    if a.method == "prior":  # a random tiny model may not turn the object at all
        assert a.degrees == PRIOR_ELEVATION and a.turn < MIN_TURN
    else:
        assert a.scores[DEFAULT_CANDIDATES.index(a.degrees)] == min(a.scores)
    json.dumps(a.as_dict())
    with pytest.raises(Zero123Error, match="azimuth change"):
        estimate_input_elevation(stable_pipe, object_rgba(), delta_azimuth=0)
    with pytest.raises(Zero123Error, match="Zero123Pipeline or Zero123Model"):
        estimate_input_elevation("model", object_rgba())


def test_pipeline_auto_input_elevation(stable_pipe):
    kw = dict(num_inference_steps=2, output_type="pt", progress=False)
    auto = stable_pipe(object_rgba(), [0.0], [90.0], input_elevation="auto",
                       generator=torch.Generator().manual_seed(0), **kw)
    est = auto.elevation_estimate
    assert est is not None and est.degrees in DEFAULT_CANDIDATES
    given = stable_pipe(object_rgba(), [0.0], [90.0], input_elevation=est.degrees,
                        generator=torch.Generator().manual_seed(0), **kw)
    assert given.elevation_estimate is None and torch.equal(auto.images, given.images)
    with pytest.raises(Zero123Error, match="degrees or 'auto'"):
        stable_pipe(object_rgba(), [0.0], [90.0], input_elevation="high", **kw)
    relative = Zero123Pipeline(tiny_config("zero123").build(seed=0).eval())
    assert relative(object_rgba(), [0.0], [90.0], input_elevation="auto", **kw).elevation_estimate is None


def test_views_cli_prints_and_records_the_estimate(tmp_path, fixtures_dir, capsys, monkeypatch):
    from zero123.cli import main

    object_rgba().save(tmp_path / "obj.png")
    base = ["views", str(tmp_path / "obj.png"), "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"),
            "--variant", "stable_zero123", "--azimuth", "90", "--steps", "2"]
    import zero123.pipelines.zero123_pipeline as zp

    calls = []
    real_prepare = zp.prepare_input_image
    monkeypatch.setattr(zp, "prepare_input_image", lambda *a, **k: calls.append(1) or real_prepare(*a, **k))
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert len(calls) == 1  # the photo is prepared once, for the estimate and the views alike
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("input elevation")]
    meta = json.loads((tmp_path / "a" / "views.json").read_text())
    assert meta["input_elevation_source"] == "estimated"
    assert len(line) == 1 and f" {meta['input_elevation']:g} deg" in line[0]
    assert line[0].endswith("give --input-elevation DEG to override)")
    assert meta["elevation_estimate"]["degrees"] == meta["input_elevation"]
    assert main(base + ["--input-elevation", "12", "--out", str(tmp_path / "b")]) == 0
    assert "input elevation" not in capsys.readouterr().out
    meta = json.loads((tmp_path / "b" / "views.json").read_text())
    assert (meta["input_elevation"], meta["input_elevation_source"], meta["elevation_estimate"]) == \
        (12.0, "given", None)


def test_to3d_auto_elevation_places_the_reference_camera(stable_pipe, tmp_path):
    from zero123.pipelines.image_to_3d import load_checkpoint, prepare_reference, to3d
    from zero123.pipelines.image_to_3d_config import preset_config

    res = to3d(object_rgba(), out_dir=tmp_path / "run", preset="tiny", steps=1, model=stable_pipe.model,
               progress=False, export=False, input_elevation="auto")
    reference = prepare_reference(object_rgba(), preset_config("tiny").reference.image_size, 32)
    expected = estimate_input_elevation(stable_pipe.model, reference.condition).degrees
    assert res.input_elevation == res.elevation_estimate["degrees"] == expected
    assert load_checkpoint(tmp_path / "run")["config"]["reference"]["elevation"] == expected
