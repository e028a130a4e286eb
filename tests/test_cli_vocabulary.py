"""One CLI vocabulary (--input-elevation, comma lists), --variant on to3d / text-to-3d, Ctrl-C's resume message,
and to3d's output folder (replaced whole, resumed in place)."""

import shlex

import numpy as np
import pytest
from PIL import Image

from zero123.cli import build_parser, main
from zero123.errors import Zero123Error
from zero123.models.configs import tiny_config
from zero123.pipelines import image_to_3d
from zero123.pipelines.image_to_3d import ImageTo3DTrainer, Interrupted, load_checkpoint, to3d

from test_to3d import ctrl_c_at_step


def object_image(size=64) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.3 * size) ** 2] = [200, 60, 40, 255]
    return Image.fromarray(rgba)


@pytest.fixture(scope="module")
def model():
    return tiny_config("stable_zero123").build(seed=0).eval()


class Stop(Exception):
    pass


def test_list_options_take_spaces_or_commas():
    parse = build_parser().parse_args
    a = parse(["views", "x.png", "--out", "o", "--azimuth", "90,180", "270", "--elevation", "-10,20,5"])
    assert a.azimuth == [90.0, 180.0, 270.0] and a.elevation == [-10.0, 20.0, 5.0]
    assert parse(["views", "x.png", "--out", "o", "--azimuth", "-45,45"]).azimuth == [-45.0, 45.0]
    assert parse(["views", "x.png", "--out", "o", "-a", "-45", "45"]).azimuth == [-45.0, 45.0]
    r = parse(["render-dataset", "--out", "d", "--elevation-range", "-10,30", "--distance-range", "1.5", "2"])
    assert r.elevation_range == [-10.0, 30.0] and r.distance_range == [1.5, 2.0]
    for bad in (["views", "x.png", "--out", "o", "--azimuth", "90,north"],
                ["render-dataset", "--out", "d", "--elevation-range", "1,2,3"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_input_elevation_is_one_option_everywhere():
    parse = build_parser().parse_args
    assert parse(["views", "x.png", "--out", "o", "--input-elevation", "12"]).input_elevation == 12.0
    assert parse(["to3d", "x.png", "--out", "o", "--input-elevation", "12"]).input_elevation == 12.0
    t = parse(["text-to-3d", "a dog", "--t2i-model", "m", "--out", "o", "--input-elevation", "12"])
    assert t.input_elevation == 12.0
    assert parse(["to3d", "x.png", "--out", "o", "--variant", "stable_zero123"]).variant == "stable_zero123"
    assert parse(["text-to-3d", "a", "--t2i-model", "m", "--out", "o", "--variant", "zero123"]).variant == "zero123"


def test_to3d_variant_reaches_the_loader(tmp_path, fixtures_dir, monkeypatch):
    """The fixture's file name says nothing about the variant: without --variant it loads as zero123."""
    seen = []

    def capture(self, representation, guidance, *a, **k):
        seen.append(guidance.model.variant.value)
        raise Stop

    monkeypatch.setattr(ImageTo3DTrainer, "__init__", capture)
    ckpt = fixtures_dir / "tiny_zero123_ldm.ckpt"
    for variant in (None, "stable_zero123"):
        with pytest.raises(Stop):
            to3d(object_image(), ckpt, tmp_path / "o", preset="tiny", device="cpu", progress=False, variant=variant)
    assert seen == ["zero123", "stable_zero123"]
    with pytest.raises(Zero123Error, match="unknown variant 'sz'"):
        to3d(object_image(), ckpt, tmp_path / "o", variant="sz")


def test_to3d_cli_passes_variant_and_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    calls = {}

    def fake_to3d(image, checkpoint, out, **kw):
        calls.update(kw, checkpoint=checkpoint)
        raise Interrupted(tmp_path / "my out" / "checkpoints" / "state.pt", tmp_path / "my out", 3, 200)

    monkeypatch.setattr(image_to_3d, "to3d", fake_to3d)
    rc = main(["to3d", "photo.png", "--checkpoint", "m.ckpt", "--variant", "stable_zero123", "--steps", "200",
               "--input-elevation", "15", "--out", str(tmp_path / "my out")])
    assert rc == 130 and calls["variant"] == "stable_zero123" and calls["input_elevation"] == 15.0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"zero123: interrupted at step 3 of 200; the state is saved in {tmp_path}/my out/checkpoints/state.pt"
    assert err[1].startswith("resume with: zero123 to3d ")
    resume = build_parser().parse_args(shlex.split(err[1][len("resume with: "):])[1:])
    assert (resume.image, resume.out, resume.resume) == ("photo.png", str(tmp_path / "my out"), str(tmp_path / "my out"))
    assert (resume.checkpoint, resume.variant, resume.steps) == ("m.ckpt", "stable_zero123", 200)


def test_to3d_replaces_an_earlier_run_whole_ctrl_c_names_the_state_and_resume_continues_in_place(model, tmp_path,
                                                                                               monkeypatch):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("turntable.gif", "model.obj", "input.png", "checkpoints/state.pt"):
        (out / name).write_bytes(b"old")
    with ctrl_c_at_step(monkeypatch, 1), pytest.raises(Interrupted) as info:
        to3d(object_image(), out_dir=out, preset="tiny", steps=1, model=model, progress=False, export=False)
    assert (info.value.step, info.value.steps, info.value.checkpoint) == (0, 1, out / "checkpoints" / "state.pt")
    assert load_checkpoint(info.value.checkpoint)["step"] == 0
    # the earlier run's files are gone, not mixed with this run's
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "input_rgba.png", "mask.png"]  # this run's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    (out / "notes.txt").write_text("kept")  # resuming in place continues the folder as it is
    res = to3d(out / "input_rgba.png", out_dir=out, resume=out, model=model, progress=False, export=False)
    assert res.steps == 1 and load_checkpoint(out)["step"] == 1 and (out / "notes.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "input_rgba.png", "mask.png", "notes.txt",
                                                     "result.json"]


def test_to3d_rerun_in_a_text_to_3d_folder_keeps_its_images(model, tmp_path):
    """`zero123 to3d DIR/input_rgba.png --out DIR` (text-to-3d's rerun hint): text-to-3d's files stay, to3d's own
    earlier files go; a plain to3d folder rerun on its own input_rgba.png keeps an input."""
    out = tmp_path / "dog"
    (out / "candidates").mkdir(parents=True)
    (out / "candidates" / "00.png").write_bytes(b"png")
    (out / "text_to_3d.json").write_text("{}")
    object_image().save(out / "input_rgba.png")
    (out / "turntable.gif").write_bytes(b"old")
    before = (out / "input_rgba.png").read_bytes()
    to3d(out / "input_rgba.png", out_dir=out, preset="tiny", steps=1, model=model, progress=False, export=False)
    assert sorted(p.name for p in out.iterdir()) == ["candidates", "checkpoints", "input_rgba.png", "mask.png",
                                                     "result.json", "text_to_3d.json"]
    assert (out / "input_rgba.png").read_bytes() == before and (out / "candidates" / "00.png").exists()
    (out / "text_to_3d.json").unlink()
    import shutil

    shutil.rmtree(out / "candidates")
    to3d(out / "input_rgba.png", out_dir=out, preset="tiny", steps=1, model=model, progress=False, export=False)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "input_rgba.png", "mask.png", "result.json"]


def test_resume_command_repeats_the_options_that_shape_the_input():
    """The printed resume command carries the mask / matting / original-config options of the run (the reference view
    is prepared again on resume), and leaves the mask out for text-to-3d's cut-out input_rgba.png."""
    import argparse

    from zero123.commands.to3d import resume_command

    args = argparse.Namespace(checkpoint="m.ckpt", variant=None, steps=None, device=None, dtype=None,
                              original_config="cfg.yaml", segmentation="auto", mask="my mask.png",
                              matting_model=None, matting_kind="auto")
    cmd = resume_command("photo.png", "out", args)
    assert cmd == ("zero123 to3d photo.png --out out --resume out --checkpoint m.ckpt --original-config cfg.yaml "
                   "--mask 'my mask.png'")
    assert "--mask" not in resume_command("out/input_rgba.png", "out", args, foreground=False)
