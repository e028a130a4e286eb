"""``zero123 eval-3d``: ground truth rebuilt from a rendered dataset, metrics, the result's frame, baselines, and
a whole run on 2 held-out objects (tiny preset, tiny fixture checkpoint)."""

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from zero123.cli import main
from zero123.data import layout
from zero123.data.objects import procedural_sources
from zero123.data.render import DatasetRenderSettings, render_dataset
from zero123.evaluation.eval3d import (Eval3DConfig, extruded_silhouette, load_ground_truth, load_result_mesh,
                                       normalize_unit_cube, render_input_view, shape_metrics, silhouette_sphere,
                                       view_metrics)
from zero123.export import write_ply


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval3d") / "ds"
    render_dataset(procedural_sources(4), root, DatasetRenderSettings(image_size=32, views_per_object=3, samples=1,
                                                                      test_fraction=0.5), workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def ground_truth(dataset):
    manifest = layout.read_manifest(dataset)
    return load_ground_truth(dataset, manifest, manifest.objects_in("test")[0])


def test_ground_truth_is_rebuilt_exactly_and_scores_perfectly_against_itself(ground_truth):
    gt = ground_truth
    lo, hi = gt.mesh.bounds
    assert (hi - lo).max() == pytest.approx(1.0) and np.abs(lo + hi).max() < 1e-6
    m = shape_metrics(normalize_unit_cube(gt.mesh), gt.mesh, points=500, iou_resolution=32)
    assert m["chamfer"] < 1e-6 and m["iou"] > 0.999 and m["f@0.05"] == 1.0 and m["f@0.1"] == 1.0
    # the mesh and the replayed light give back the stored renders exactly
    v, renders = view_metrics(gt.mesh, gt, range(len(gt.rgba)))
    assert v["psnr"] == 100.0 and v["ssim"] == pytest.approx(1.0)
    np.testing.assert_array_equal(renders, gt.rgba)


def test_metrics_on_a_known_pair():
    big = normalize_unit_cube(trimesh.creation.icosphere(subdivisions=4))   # radius 0.5
    small = big.copy()
    small.vertices *= 0.85                                                    # radius 0.425: 0.075 away
    m = shape_metrics(small, big, points=1000, iou_resolution=48)
    assert m["chamfer"] == pytest.approx(0.075, abs=2e-3)
    assert m["f@0.1"] == 1.0 and m["f@0.05"] == 0.0
    assert m["iou"] == pytest.approx(0.85 ** 3, abs=0.06)


def test_result_mesh_is_mapped_into_the_ground_truth_frame_with_the_input_azimuth(ground_truth, tmp_path):
    """to3d's world has its input camera at azimuth 0; the dataset's input camera is at 60 degrees. A result
    equal to the object must land on the ground truth, and would not if the camera's azimuth were ignored."""
    gt_mesh = ground_truth.mesh
    azim = 60.0
    turn = trimesh.transformations.rotation_matrix(math.radians(-azim), [0, 0, 1])
    to3d_world = gt_mesh.copy().apply_transform(turn)            # the object as to3d sees it
    write_ply(to3d_world, tmp_path / "model.ply", 0.0)           # as export_results writes it
    right = normalize_unit_cube(load_result_mesh(tmp_path / "model.ply", azim))
    wrong = normalize_unit_cube(load_result_mesh(tmp_path / "model.ply", 0.0))
    gt = normalize_unit_cube(gt_mesh)
    assert shape_metrics(right, gt, points=500, iou_resolution=32)["chamfer"] < 1e-4
    assert shape_metrics(wrong, gt, points=500, iou_resolution=32)["chamfer"] > 0.01


@pytest.mark.parametrize("azimuth", [0.0, 90.0])
def test_baselines_extrude_along_the_viewing_axis(ground_truth, azimuth):
    cfg = Eval3DConfig(input_elevation=0.0, input_azimuth=azimuth)
    rgba, c2w = render_input_view(ground_truth, cfg)
    mask = rgba[..., 3] > 127
    ext = extruded_silhouette(rgba, c2w, ground_truth.fov_deg, cfg.input_distance)
    lo, hi = ext.bounds
    view_axis, side_axis = (0, 1) if azimuth == 0.0 else (1, 0)
    width = hi[side_axis] - lo[side_axis]
    assert hi[view_axis] - lo[view_axis] == pytest.approx(width, rel=0.05)   # depth = width
    assert abs(lo[view_axis] + hi[view_axis]) < 0.02                          # centred on the origin's plane
    cols = np.nonzero(mask.any(0))[0]
    pix = cfg.input_distance * 2 * math.tan(math.radians(ground_truth.fov_deg) / 2) / mask.shape[1]
    assert width == pytest.approx((cols.max() + 1 - cols.min()) * pix, rel=0.05)
    assert ext.volume > 0 and ext.visual.kind == "vertex"
    sph = silhouette_sphere(rgba, c2w, ground_truth.fov_deg, cfg.input_distance)
    r = np.linalg.norm(sph.vertices - sph.vertices.mean(0), axis=1)
    assert r.std() < 0.02 * r.mean() and 2 * r.mean() == pytest.approx(
        max(width, hi[2] - lo[2]), rel=0.05)


def test_ground_truth_views_reconstruction_beats_both_baselines_on_a_torus():
    """The upper-bound row on a known object whose silhouette says little about its shape (seen from 10 degrees,
    a torus looks like a flat ellipse): a small reconstruction from many views is far closer than either
    baseline built from the one input view."""
    from zero123.evaluation.eval3d import GroundTruth, _gt_views_mesh
    from zero123.rendering.mesh_rasterizer import prepare_mesh

    torus = normalize_unit_cube(trimesh.creation.torus(major_radius=0.7, minor_radius=0.3, major_sections=48,
                                                       minor_sections=24))
    gt = GroundTruth("torus", torus, prepare_mesh(torus), np.zeros((0, 64, 64, 4), np.uint8),
                     torch.zeros(0, 4, 4), np.array([0.0, 0.0, 1.0]), 0.5, 49.1, 64, 1)
    cfg = Eval3DConfig(preset="tiny", gt_views_steps=60)
    rgba, c2w = render_input_view(gt, cfg)
    scores = {name: shape_metrics(normalize_unit_cube(mesh), torus, points=500, iou_resolution=32)
              for name, mesh in (("gt_views", _gt_views_mesh(gt, cfg, "cpu")),
                                 ("extrude", extruded_silhouette(rgba, c2w, gt.fov_deg, cfg.input_distance)),
                                 ("sphere", silhouette_sphere(rgba, c2w, gt.fov_deg, cfg.input_distance)))}
    best_baseline = min(scores["extrude"]["chamfer"], scores["sphere"]["chamfer"])
    assert scores["gt_views"]["chamfer"] < 0.5 * best_baseline, scores
    assert scores["gt_views"]["iou"] > max(scores["extrude"]["iou"], scores["sphere"]["iou"]), scores


def test_eval_3d_cli_two_objects(dataset, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "e3d"
    args = ["eval-3d", "--data", str(dataset), "--out", str(out), "--preset", "tiny", "--checkpoint",
            str(fixtures_dir / "tiny_zero123_ldm.ckpt"), "--rows", "model,extrude,sphere", "--max-views", "2",
            "--points", "500", "--iou-resolution", "32", "--quiet"]
    assert main(args) == 0
    table = capsys.readouterr().out
    for row in ("model", "extrude", "sphere"):
        assert row in table
    res = json.loads((out / "eval3d.json").read_text())
    assert res["objects_scored"] == 2
    s = res["summary"]
    assert s["model"]["n"] + s["model"]["failed"] == 2 and s["extrude"]["n"] == s["sphere"]["n"] == 2
    for oid, rows in res["objects"].items():
        assert (out / "objects" / oid / "figure.png").is_file() and (out / "objects" / oid / "input.png").is_file()
        assert (out / "objects" / oid / "model" / "model.ply").is_file()
        assert rows["extrude"]["gt_rerender_psnr"] == 100.0
        for row in ("extrude", "sphere"):
            assert 0 < rows[row]["chamfer"] < 0.5 and 0 < rows[row]["iou"] < 1
        # each row's wall time, and the model row's to3d stages inside it
        sec = rows["model"]["seconds"]
        assert sec["build"] >= sec["train_s"] > 0 and sec["score"] > 0 and sec["build"] >= sec["total_s"]
    assert "wall seconds an object: model" in table
    # a rerun with --cached-only reads the cache: same numbers, nothing recomputed
    assert main(args + ["--cached-only"]) == 0
    assert json.loads((out / "eval3d.json").read_text())["summary"] == s


def test_eval_3d_bad_input_is_one_line(dataset, tmp_path, capsys):
    assert main(["eval-3d", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert main(["eval-3d", "--data", str(dataset), "--out", str(tmp_path / "o"), "--rows", "model,cube"]) == 2
    assert main(["eval-3d", "--data", str(dataset), "--out", str(tmp_path / "o"), "--preset", "huge",
                 "--rows", "sphere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("zero123: error: ") for e in err)
    assert not (tmp_path / "o").exists()


def test_eval_3d_config_overrides_reach_to3d_and_key_the_cache(dataset, fixtures_dir, tmp_path, capsys):
    """--set goes into the model row's to3d config (and the cache key), --objects picks and orders the objects."""
    ids = [o.id for o in layout.read_manifest(dataset).objects_in("test")]
    out = tmp_path / "e3d"
    args = ["eval-3d", "--data", str(dataset), "--out", str(out), "--preset", "tiny", "--checkpoint",
            str(fixtures_dir / "tiny_zero123_ldm.ckpt"), "--rows", "model", "--max-views", "1", "--points", "200",
            "--iou-resolution", "16", "--quiet", "--objects", ids[1]]
    assert main(args + ["--set", "steps=2", "--set", "sds.guidance_scale=5"]) == 0
    res = json.loads((out / "eval3d.json").read_text())
    assert list(res["objects"]) == [ids[1]] and res["settings"]["overrides"] == ["steps=2", "sds.guidance_scale=5"]
    run = json.loads((out / "objects" / ids[1] / "model" / "result.json").read_text())
    assert run["steps"] == 2                                         # the tiny preset's own is 4
    state = torch.load(out / "objects" / ids[1] / "model" / "checkpoints" / "state.pt", weights_only=True)
    assert state["config"]["sds"]["guidance_scale"] == 5.0
    # other overrides are another setting: the cached result is not reused for them
    assert main(args + ["--set", "steps=3", "--cached-only"]) == 0
    assert json.loads((out / "eval3d.json").read_text())["objects_scored"] == 0
    # a bad key or object is a one-line error before any work
    capsys.readouterr()
    assert main(args[:-1] + ["nope", "--out", str(tmp_path / "o2")]) == 2
    assert main(args + ["--out", str(tmp_path / "o3"), "--set", "cameras.fov=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "'nope' is not in" in err[0] and "unknown key cameras.fov" in err[1]
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_paired_comparison_on_the_common_objects():
    from zero123.evaluation.eval3d import paired_comparison

    rng = np.random.default_rng(0)
    base = {f"o{i}": {"model": {"chamfer": float(c), "iou": float(u)}, "extrude": {"chamfer": 0.2, "iou": 0.1}}
            for i, (c, u) in enumerate(rng.uniform(0.02, 0.1, (6, 2)))}
    other = {k: {"model": {"chamfer": v["model"]["chamfer"] - 0.01 * j, "iou": v["model"]["iou"] - 0.02}}
             for j, (k, v) in enumerate(base.items()) if k != "o5"}
    other["o4"] = {"model": {"error": "marching cubes found no surface"}}   # failures are left out of the pairs
    other["extra"] = {"model": {"chamfer": 0.0, "iou": 1.0}}                 # so are objects the base lacks
    r = paired_comparison(base, other, metrics=("chamfer", "iou"))
    assert r["n"] == 4 and r["objects"] == ["o0", "o1", "o2", "o3"]
    d = np.array([-0.01 * j for j in range(4)])
    assert r["metrics"]["chamfer"]["delta"] == pytest.approx(d.mean())
    assert r["metrics"]["chamfer"]["se"] == pytest.approx(d.std(ddof=1) / 2)
    assert r["metrics"]["chamfer"]["wins"] == 3            # lower is better; o0 is a tie
    assert r["metrics"]["iou"]["delta"] == pytest.approx(-0.02) and r["metrics"]["iou"]["wins"] == 0
    assert r["metrics"]["iou"]["base"] == pytest.approx(np.mean([base[i]["model"]["iou"] for i in r["objects"]]))
    vs = paired_comparison(base, base, row="extrude", metrics=("chamfer",))
    assert vs["n"] == 6 and vs["metrics"]["chamfer"]["wins"] == 6   # every model row beats this extrude


def test_eval_3d_jobs_match_one_process_and_fail_in_one_line(dataset, fixtures_dir, tmp_path, capsys):
    """--jobs 2: two child processes share the objects; their cached rows equal a one-process run's (the
    baselines exactly, the model row at float rounding: threads differ), the table is printed, and a child's
    failure is one line naming its log."""
    common = ["--data", str(dataset), "--preset", "tiny", "--checkpoint", str(fixtures_dir / "tiny_zero123_ldm.ckpt"),
              "--rows", "model,extrude,sphere", "--max-views", "2", "--points", "500", "--iou-resolution", "32",
              "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["eval-3d", "--out", str(one), *common]) == 0
    capsys.readouterr()
    assert main(["eval-3d", "--out", str(two), "--jobs", "2", *common]) == 0
    table = capsys.readouterr().out
    assert "2 of 2 objects" in table and "wrote" in table
    a, b = (json.loads((d / "eval3d.json").read_text()) for d in (one, two))
    assert sorted(a["objects"]) == sorted(b["objects"]) and len(b["objects"]) == 2
    for oid in a["objects"]:
        for row in ("extrude", "sphere"):
            assert a["objects"][oid][row]["chamfer"] == b["objects"][oid][row]["chamfer"]
        ma, mb = a["objects"][oid]["model"], b["objects"][oid]["model"]
        assert ("error" in ma) == ("error" in mb)
        if "error" not in ma:
            assert mb["chamfer"] == pytest.approx(ma["chamfer"], rel=0.05, abs=1e-3)
    logs = sorted(p.name for p in (two / "logs").iterdir())
    assert logs == ["job0.log", "job1.log"]
    # a child that fails (an unreadable checkpoint: found, so the parent's check passes) is one line
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    args = ["eval-3d", "--out", str(tmp_path / "bad"), "--jobs", "2", *common[:4], "--checkpoint", str(bad), *common[6:]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eval-3d job" in err and "failed" in err and ("job0.log" in err or "job1.log" in err)
    assert main(["eval-3d", "--out", str(tmp_path / "x"), "--jobs", "0", *common]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
