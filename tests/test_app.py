"""The web app's handlers (zero123.app.Zero123App) called directly with the tiny fixture checkpoint, and build_app."""

import os
import time
import zipfile

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from test_to3d import object_image  # noqa: E402  (tests/ is on sys.path under pytest)
from zero123.app import AppConfig, Zero123App
from zero123.errors import Zero123Error
from zero123.pipelines.image_to_3d import load_checkpoint, to3d


@pytest.fixture(scope="module")
def app(fixtures_dir, tmp_path_factory):
    cfg = AppConfig(checkpoint=str(fixtures_dir / "tiny_zero123_ldm.ckpt"), device="cpu",
                    work_dir=tmp_path_factory.mktemp("app_work"), max_upload_bytes=200_000, max_pixels=1_000_000)
    return Zero123App(cfg)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("photo") / "obj.png"
    object_image().save(p)
    return p


def test_views_match_the_pipeline_and_sessions_are_separate(app, photo):
    a = app.prepare("alice", photo)
    assert a.parent == app.session_dir("alice") and Image.open(a).mode == "RGBA"
    res = app.views("alice", [0.0, 10.0], [90.0, 180.0], steps=3, seed=5)
    assert [p.name for p in res.images] == ["view_00.png", "view_01.png"]
    got = [np.asarray(Image.open(p)) for p in res.images]
    # the same call on the pipeline directly gives the same pixels
    ref = app.pipeline(str(a), [0.0, 10.0], [90.0, 180.0], [0.0, 0.0], num_inference_steps=3,
                       generator=torch.Generator().manual_seed(5), progress=False).images
    for g, r in zip(got, ref):
        assert np.array_equal(g, np.asarray(r))
    assert Image.open(res.grid).size == (3 * 32, 32)
    # another session has its own folder and no input yet
    assert app.session_dir("bob") != app.session_dir("alice")
    with pytest.raises(Zero123Error, match="upload a photo first"):
        app.views("bob", [0.0], [90.0], steps=2)
    # a second call replaces the views folder whole (no stale view_01)
    res2 = app.views("alice", [0.0], [45.0], steps=2)
    assert sorted(p.name for p in res2.grid.parent.iterdir()) == ["grid.png", "view_00.png"]
    elevs, azims = app.orbit(3, 5.0)
    assert elevs == [5.0] * 3 and azims == [90.0, 180.0, 270.0]
    with pytest.raises(Zero123Error, match="elevation"):
        app.views("alice", [100.0], [0.0], steps=2)
    with pytest.raises(Zero123Error, match="views"):
        app.orbit(0)


def test_bad_images_are_one_line_errors(app, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(Zero123Error, match="not a readable image"):
        app.prepare("carol", text)
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(300_000))
    with pytest.raises(Zero123Error, match="upload limit"):
        app.prepare("carol", big)
    # a decompression bomb: a small file (a few kB) that decodes to 4000x4000 pixels
    bomb = tmp_path / "bomb.png"
    Image.new("L", (4000, 4000), 255).save(bomb, optimize=True)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(Zero123Error, match="pixels"):
        app.prepare("carol", bomb)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(plain)
    with pytest.raises(Zero123Error, match="no object"):
        app.prepare("carol", plain)
    assert not (app.session_dir("carol") / "input_rgba.png").exists()


def test_image_to_3d_cancel_then_resume_equals_an_uninterrupted_run(app, photo, tmp_path):
    inp = app.prepare("dave", photo)
    seen = []

    def cancel_after_one(step, total, losses):
        seen.append((step, total, bool(np.isfinite(losses["loss"]))))
        app.cancel("dave")

    cut = app.image_to_3d("dave", preset="tiny", steps=2, seed=2, callback=cancel_after_one)
    assert cut.cancelled and cut.steps == 1 and cut.glb is None and "Resume" in cut.status
    assert seen == [(1, 2, True)]
    assert load_checkpoint(cut.checkpoint)["step"] == 1
    resumed = app.image_to_3d("dave", resume=True, seed=2)
    assert not resumed.cancelled and resumed.steps == 2
    assert len(trimesh.load(resumed.glb, force="mesh").faces) > 0
    with zipfile.ZipFile(resumed.obj_zip) as zf:
        names = zf.namelist()
    assert "model.obj" in names and any(n.endswith(".mtl") for n in names)
    assert resumed.ply.stat().st_size > 0 and resumed.video.suffix == ".mp4"
    # the same as an uninterrupted run of to3d() on the same input
    to3d(str(inp), out_dir=tmp_path / "full", preset="tiny", steps=2, seed=2, model=app.pipeline.model,
         progress=False, export=False)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(resumed.checkpoint)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    app.prepare("frank", photo)
    with pytest.raises(Zero123Error, match="nothing to resume"):
        app.image_to_3d("frank", resume=True)


def test_live_progress_lines_and_closing_cancels(app, photo):
    app.prepare("gina", photo)
    live = app.image_to_3d_live("gina", preset="tiny", steps=2)
    lines = [line for line, out in live]
    assert lines[0].startswith("starting") and lines[-1].startswith("done: 2 steps")
    assert any(line.startswith("step 2 / 2 · loss ") and "ETA" in line for line in lines)
    # closing the iterator mid-run (a browser gone) stops the run and keeps its checkpoint
    live = app.image_to_3d_live("gina", preset="tiny", steps=50)
    next(live), next(live)
    live.close()
    state = load_checkpoint(app.session_dir("gina") / "to3d")
    assert 1 <= state["step"] < 50


def test_session_folders_expire(app):
    old = app.session_dir("old-user")
    past = time.time() - app.config.session_max_age_s - 10
    os.utime(old, (past, past))
    keep = app.session_dir("new-user")
    removed = app.cleanup()
    assert old in removed and not old.exists() and keep.exists()


def test_build_app_has_the_tabs(app):
    gr = pytest.importorskip("gradio")
    demo = __import__("zero123.app", fromlist=["build_app"]).build_app(app=app)
    assert isinstance(demo, gr.Blocks) and demo.zero123 is app
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert {"Novel views", "Image-to-3D", "3D model", "Views"} <= labels and "Text-to-3D" not in labels
    apis = {d.api_name for d in demo.fns.values()}
    assert {"views", "orbit", "to3d", "resume", "cancel"} <= apis


def test_missing_gradio_and_bad_options_are_one_line_errors(monkeypatch, capsys, tmp_path):
    import sys

    from zero123.app import import_gradio
    from zero123.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the web extra were not installed
    with pytest.raises(Zero123Error, match=r'pip install "zero123\[web\]"'):
        import_gradio()
    assert main(["app", "--port", "7861"]) == 2
    monkeypatch.undo()
    assert main(["app", "--port", "0"]) == 2
    assert main(["app", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("zero123: error:") for line in err)
    assert "zero123[web]" in err[0] and "--port" in err[1] and "not found" in err[2]


def test_views_sampler_defaults_and_choice(app, photo):
    """The bundled model's app default is the cheaper sampler; a checkpoint keeps DDIM 50; the click's scheduler is
    the one the pipeline runs (same pixels as the pipeline with it, not DDIM's)."""
    from zero123.app import BUNDLED_SAMPLING

    assert AppConfig().sampling() == BUNDLED_SAMPLING and BUNDLED_SAMPLING[0] in ("dpmpp", "unipc")
    assert app.config.sampling() == ("ddim", 50)
    assert AppConfig(scheduler="unipc", steps=12).sampling() == ("unipc", 12)
    app.prepare("carol", photo)
    res = app.views("carol", [0.0], [90.0], steps=3, seed=1, scheduler="unipc")
    ref = {s: np.asarray(app.pipeline(str(app.input_path("carol")), [0.0], [90.0], [0.0], num_inference_steps=3,
                                      generator=torch.Generator().manual_seed(1), progress=False,
                                      scheduler=s).images[0]) for s in ("unipc", "ddim")}
    got = np.asarray(Image.open(res.images[0]))
    assert np.array_equal(got, ref["unipc"]) and not np.array_equal(got, ref["ddim"])
    with pytest.raises(Zero123Error, match="scheduler must be one of"):
        app.views("carol", [0.0], [90.0], steps=3, scheduler="euler")
