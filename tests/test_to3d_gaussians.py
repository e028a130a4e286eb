"""to3d with 3D Gaussians (``--representation gaussians``) on CPU with the tiny random model: presets, the CLI
writes OBJ/GLB/PLY and a turntable that re-load, and a resumed run (with densification changing the count
between checkpoints) continues exactly."""

import numpy as np
import pytest
import torch
import trimesh

from zero123.errors import Zero123Error
from zero123.models.configs import tiny_config
from zero123.pipelines.image_to_3d import load_checkpoint, to3d
from zero123.pipelines.image_to_3d_config import ImageTo3DConfig, preset_config

from test_to3d import ctrl_c_at_step, object_image


@pytest.fixture(scope="module")
def model():
    return tiny_config("stable_zero123").build(seed=0).eval()


def test_gaussian_presets_follow_dreamgaussian():
    d = preset_config("default", representation="gaussians")
    assert d.representation == "gaussians" and (d.steps, d.schedule_steps) == (500, 500)
    assert d.cameras.resolutions == (128, 256, 512) and d.cameras.batch_sizes == (1, 1, 1)
    assert [d.stage(s) for s in (0, 149, 150, 299, 300)] == [0, 0, 1, 1, 2]
    assert (d.reference.distance, d.reference.fovy, d.reference.image_size) == (2.0, 49.1, 256)
    g = d.gaussians
    assert (g.num_points, g.densify_interval, g.densify_grad_threshold, g.percent_dense) == (5000, 100, 0.01, 0.01)
    lam = d.losses.at(249)                                  # DreamGaussian: 10000 / 1000 * step / iters
    assert lam["rgb"] == pytest.approx(5000.0) and lam["mask"] == pytest.approx(500.0) and lam["sds"] == 1.0
    assert lam["sparsity"] == lam["opaque"] == lam["orient"] == 0.0
    from zero123.guidance.schedules import scheduled_value
    assert scheduled_value(d.sds.min_step_percent, 249) == pytest.approx(0.5)   # t = 1 - step/iters
    for name in ("fast", "cpu", "tiny"):
        c = preset_config(name, representation="gaussians")
        assert c.representation == "gaussians" and c.preset == name
        assert ImageTo3DConfig.from_dict(c.to_dict()) == c
    assert preset_config("auto", device="cpu", representation="gaussians").preset == "cpu"
    assert preset_config("default").representation == "nerf"
    with pytest.raises(Zero123Error, match="representation"):
        preset_config("tiny", representation="voxels")


def test_cli_to3d_gaussians_writes_files_that_reload(model, tmp_path, capsys):
    from zero123.cli import main
    from zero123.loading import save_pretrained

    ckpt = save_pretrained(model, tmp_path / "tiny_model")
    object_image().save(tmp_path / "obj.png")
    rc = main(["to3d", str(tmp_path / "obj.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
               "--representation", "gaussians", "--preset", "tiny", "--steps", "2", "--no-progress",
               "--device", "cpu", "--input-elevation", "5"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "out"
    obj = trimesh.load(out / "model.obj", process=False)
    assert obj.visual.kind == "texture" and len(obj.faces) > 0
    assert len(trimesh.load(out / "model.glb", force="mesh").faces) == len(obj.faces)
    ply = trimesh.load(out / "model.ply", process=False)
    assert len(ply.faces) == len(obj.faces) and ply.visual.vertex_colors.shape[1] == 4
    import imageio.v2 as imageio

    frames = imageio.mimread(out / "turntable.mp4", format="FFMPEG", memtest=False)
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
    assert len(imageio.mimread(out / "turntable.gif")) == 4
    state = load_checkpoint(out)
    assert state["representation"] == "gaussians" and state["config"]["representation"] == "gaussians"
    assert not any(k.startswith(("field.", "occupancy.")) for k in state["model"])


def test_gaussian_resume_after_ctrl_c_equals_an_uninterrupted_run(model, tmp_path, monkeypatch):
    image = object_image()
    kw = dict(preset="tiny", steps=3, model=model, progress=False, export=False, seed=3,
              representation="gaussians", input_elevation=5.0)
    full = to3d(image, out_dir=tmp_path / "full", **kw)
    with ctrl_c_at_step(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        to3d(image, out_dir=tmp_path / "cut", **kw)
    saved = load_checkpoint(tmp_path / "cut")
    assert saved["step"] == 2
    n_saved = saved["model"]["gaussians.means"].shape[0]
    resumed = to3d(image, out_dir=tmp_path / "cut", resume=tmp_path / "cut", model=model, progress=False,
                   export=False, seed=3)
    assert resumed.steps == 3
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert 100 != n_saved != a["model"]["gaussians.means"].shape[0]   # densified before and after the cut
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["dev_rng"], b["dev_rng"]) and full.losses["loss"] == resumed.losses["loss"]
    assert np.isfinite(full.losses["loss"]) and "ref/rgb" in full.losses and "z/sparsity" not in full.losses


def test_app_passes_the_representation_to_to3d(fixtures_dir, tmp_path, monkeypatch):
    """The app's choice reaches to3d (the run itself is the CLI test's); a new run passes it, a resume does not."""
    import zero123.pipelines.image_to_3d as pipeline
    from zero123.app import AppConfig, Zero123App

    app = Zero123App(AppConfig(checkpoint=str(fixtures_dir / "tiny_zero123_ldm.ckpt"), device="cpu",
                               work_dir=tmp_path / "work"))
    object_image().save(tmp_path / "obj.png")
    app.prepare("ida", tmp_path / "obj.png")
    with pytest.raises(Zero123Error, match="representation"):
        app.image_to_3d("ida", preset="tiny", steps=1, representation="voxels")
    seen = []

    class Stop(Exception):
        pass

    def fake_to3d(*args, **kwargs):
        seen.append(kwargs["representation"])
        raise Stop

    monkeypatch.setattr(pipeline, "to3d", fake_to3d)
    with pytest.raises(Stop):
        app.image_to_3d("ida", preset="tiny", steps=1, representation="gaussians")
    (app.session_dir("ida") / "to3d" / "checkpoints").mkdir(parents=True)
    (app.session_dir("ida") / "to3d" / "checkpoints" / "state.pt").write_bytes(b"x")
    with pytest.raises(Stop):
        app.image_to_3d("ida", resume=True, representation="gaussians")
    assert seen == ["gaussians", None]


def test_eval3d_takes_the_representation(monkeypatch):
    import zero123.pipelines.image_to_3d as pipeline
    from zero123.evaluation import eval3d

    with pytest.raises(Zero123Error, match="representation"):
        eval3d.Eval3DConfig(representation="voxels").validate()
    cfg = eval3d.Eval3DConfig(preset="tiny", representation="gaussians").validate()
    assert cfg.cache_key()["representation"] == "gaussians"   # nerf and gaussians results never share a cache
    seen = {}

    def fake_to3d(*args, **kwargs):
        seen.update(kwargs)
        raise KeyError("stop")

    monkeypatch.setattr(pipeline, "to3d", fake_to3d)
    with pytest.raises(KeyError):
        eval3d._model_mesh(None, np.zeros((8, 8, 4), np.uint8), cfg, None)
    assert seen["representation"] == "gaussians" and seen["config"].preset == "tiny"
