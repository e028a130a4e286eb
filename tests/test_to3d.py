"""Image-to-3D pipeline and CLI on CPU with the tiny random model: files, resume, errors."""

import contextlib

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from zero123.errors import Zero123Error
from zero123.guidance import build_guidance
from zero123.models.configs import tiny_config
from zero123.pipelines.image_to_3d import ImageTo3DTrainer, load_checkpoint, prepare_reference, to3d
from zero123.pipelines.image_to_3d_config import ImageTo3DConfig, preset_config
from zero123.representations import build_representation


def object_image(size=64) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    m = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.3 * size) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[m] = [200, 60, 40, 255]
    rgba[m & (xx > size / 2)] = [40, 90, 200, 255]
    return Image.fromarray(rgba)


@contextlib.contextmanager
def ctrl_c_at_step(monkeypatch, n: int):
    """Inside the block, the image-to-3D trainer's ``n``-th train step (1-based) raises KeyboardInterrupt as a
    Ctrl-C would; the real ``train_step`` is back after the block."""
    calls = {"n": 0}
    orig = ImageTo3DTrainer.train_step

    def step(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return orig(self)

    monkeypatch.setattr(ImageTo3DTrainer, "train_step", step)
    try:
        yield
    finally:
        monkeypatch.setattr(ImageTo3DTrainer, "train_step", orig)


@pytest.fixture(scope="module")
def model():
    return tiny_config("stable_zero123").build(seed=0).eval()


def test_presets_and_config_round_trip():
    d = preset_config("default")
    assert (d.steps, d.cameras.resolutions, d.cameras.batch_sizes, d.cameras.reference_resolutions) == \
        (600, (64, 128, 256), (12, 8, 4), (128, 256, 512))
    assert d.cameras.milestones == (200, 300) and d.render.num_samples_per_ray == 512
    assert d.field.n_levels == 16 and d.field.log2_hashmap_size == 19 and d.field.radius == 2.0
    assert d.sds.guidance_scale == 3.0 and d.optimizer.lr == 0.01 and d.optimizer.betas == (0.9, 0.99)
    assert [d.stage(s) for s in (0, 199, 200, 299, 300, 599)] == [0, 0, 1, 1, 2, 2]
    f = preset_config("fast")
    assert f.steps == 300 and f.stage(99) == 0 and f.stage(100) == 1 and f.schedule_step(150) == 300
    assert preset_config("default", steps=60).schedule_step(30) == 300
    again = ImageTo3DConfig.from_dict(d.to_dict())
    assert again == d
    with pytest.raises(Zero123Error):
        preset_config("huge")
    with pytest.raises(Zero123Error):
        ImageTo3DConfig.from_dict({"nope": 1})


def test_reference_preparation():
    ref = prepare_reference(object_image(80), 64, 32)
    assert ref.rgb.shape == (1, 64, 64, 3) and ref.mask.shape == (1, 64, 64, 1)
    assert ref.condition.shape == (1, 3, 32, 32)
    assert float(ref.condition.min()) >= -1 and float(ref.condition.max()) <= 1
    # recentred to ~0.8 of the frame (the disc's diameter was 0.6 of it)
    cols = ref.mask[0, :, :, 0].any(0).nonzero()
    assert 0.7 <= (cols.max() - cols.min() + 1) / 64 <= 0.9
    # background of the conditioning image is white
    assert float(ref.condition[0, :, 0, 0].min()) > 0.99


def test_to3d_end_to_end_writes_files_that_reload(model, tmp_path):
    res = to3d(object_image(), out_dir=tmp_path / "run", preset="tiny", model=model, progress=False)
    assert res.steps == 4 and np.isfinite(res.losses["loss"])
    assert {"z/sds", "ref/rgb", "ref/mask", "z/sparsity", "z/opaque", "z/orient"} <= set(res.losses)
    obj = trimesh.load(res.obj, process=False)
    assert obj.visual.kind == "texture" and len(obj.faces) == res.num_faces > 0
    glb = trimesh.load(res.glb, force="mesh")
    assert len(glb.faces) == res.num_faces
    ply = trimesh.load(res.ply, process=False)
    assert len(ply.vertices) == res.num_vertices and ply.visual.vertex_colors.shape == (res.num_vertices, 4)
    import imageio.v2 as imageio

    frames = imageio.mimread(res.mp4, format="FFMPEG", memtest=False)
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
    assert len(imageio.mimread(res.gif)) == 4
    assert Image.open(res.preview).size[0] > 32 * 4
    assert (tmp_path / "run" / "result.json").exists() and (tmp_path / "run" / "input_rgba.png").exists()
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 4


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(model, tmp_path, monkeypatch):
    image = object_image()
    full = to3d(image, out_dir=tmp_path / "full", preset="tiny", steps=4, model=model, progress=False,
                export=False, seed=3)
    # interrupted run: Ctrl-C during the 4th step (after 3 completed steps; the periodic checkpoint was at 2)
    with ctrl_c_at_step(monkeypatch, 4), pytest.raises(KeyboardInterrupt):
        to3d(image, out_dir=tmp_path / "cut", preset="tiny", steps=4, model=model, progress=False, export=False,
             seed=3)
    saved = load_checkpoint(tmp_path / "cut")
    assert saved["step"] == 3
    resumed = to3d(image, out_dir=tmp_path / "cut", resume=tmp_path / "cut", model=model, progress=False,
                   export=False, seed=3)
    assert resumed.steps == 4
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    for k, v in a["model"].items():   # field.* and occupancy.*
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["model"]["occupancy.binary"], b["model"]["occupancy.binary"])
    assert torch.equal(a["cpu_rng"], b["cpu_rng"]) and torch.equal(a["dev_rng"], b["dev_rng"])
    assert full.losses["loss"] == resumed.losses["loss"]
    # a different seed gives a different run
    other = to3d(image, out_dir=tmp_path / "other", preset="tiny", steps=1, model=model, progress=False,
                 export=False, seed=4)
    assert other.losses["loss"] != full.losses["loss"]


def test_trainer_gradients_reach_every_field_parameter(model):
    cfg = preset_config("tiny")
    ref = prepare_reference(object_image(), 64, 32)
    tr = ImageTo3DTrainer(build_representation(cfg, model.device, seed=0), build_guidance(cfg, model, ref), ref, cfg,
                          seed=0)
    field = tr.representation.field
    before = [p.detach().clone() for p in field.parameters()]
    losses = tr.train_step()
    assert all(np.isfinite(v) for v in losses.values())
    assert all(not torch.equal(a, p) for a, p in zip(before, field.parameters()))
    assert all(p.grad is None for p in model.parameters())  # the diffusion model is never trained


def test_bad_inputs_are_clear_errors(model, tmp_path):
    with pytest.raises(Zero123Error, match="not found"):
        to3d(tmp_path / "missing.png", out_dir=tmp_path / "o", preset="tiny", model=model, progress=False)
    with pytest.raises(Zero123Error, match="preset"):
        to3d(object_image(), out_dir=tmp_path / "o", preset="huge", model=model, progress=False)
    with pytest.raises(Zero123Error, match="checkpoint"):
        to3d(object_image(), out_dir=tmp_path / "o", resume=tmp_path / "nothing", model=model, progress=False)
    with pytest.raises(Zero123Error, match="elevation"):
        to3d(object_image(), out_dir=tmp_path / "o", preset="tiny", input_elevation=120, model=model,
             progress=False)


def test_cli_to3d_end_to_end(model, tmp_path, capsys):
    from zero123.cli import main
    from zero123.loading import save_pretrained

    ckpt = save_pretrained(model, tmp_path / "tiny_model")
    object_image().save(tmp_path / "obj.png")
    rc = main(["to3d", str(tmp_path / "obj.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
               "--preset", "tiny", "--steps", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "model.obj" in out and "turntable.mp4" in out
    assert sum(line.startswith("input elevation: ") for line in out.splitlines()) == 1  # estimated, said once
    for name in ("model.obj", "model.glb", "model.ply", "turntable.mp4", "turntable.gif", "preview.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert len(trimesh.load(tmp_path / "out" / "model.ply", process=False).faces) > 0
    rc = main(["to3d", str(tmp_path / "nope.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zero123: error:")
