"""Output folders checked before model work, replaced whole, written atomically with umask permissions
(zero123.utils.atomic / zero123.utils.outputs and the commands that use them)."""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from zero123.cli import main
from zero123.errors import Zero123Error
from zero123.utils import outputs
from zero123.utils.atomic import atomic_folder, atomic_save_image, atomic_write_bytes, atomic_write_text
from zero123.utils.outputs import TO3D_OUTPUTS, VIEWS_OUTPUTS, check_output_dir, check_output_file


@pytest.fixture
def umask():
    """Set a umask for the test and restore the old one after."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A red block on a plain light background (segmented by border colour)."""
    rgb = np.full((90, 120, 3), 250, np.uint8)
    rgb[20:80, 30:70] = (180, 40, 40)
    path = tmp_path_factory.mktemp("img") / "obj.png"
    Image.fromarray(rgb).save(path)
    return path


def one_line_error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("zero123: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ----- the atomic writer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    png = atomic_save_image(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    js = atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    assert mode(png) == mode(js) == 0o666 & ~mask  # 0644 under 022, not mkstemp's 0600
    assert mode(tmp_path / "folder") == 0o777 & ~mask  # not mkdtemp's 0700
    assert Image.open(png).format == "PNG"  # the temporary name kept the suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png", "folder"]  # no temporaries left


def test_failed_writes_leave_the_old_file_and_folder(tmp_path):
    atomic_write_bytes(tmp_path / "f.bin", b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    from zero123.utils.atomic import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f.bin", broken)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("crash")
    assert (tmp_path / "f.bin").read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "out"]
    with atomic_folder(tmp_path / "out") as tmp:  # success: replaced whole
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "out"]


# ----- output checks -----------------------------------------------------------------------------------------------
def test_check_output_dir_cases(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper", VIEWS_OUTPUTS) == "new"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", VIEWS_OUTPUTS) == "empty"
    ours = tmp_path / "ours"
    ours.mkdir()
    for name in ("view_00.png", "view_01.png", "grid.png", "views.json", "input_rgba.png", ".grid.abc.tmp.png"):
        (ours / name).write_bytes(b"x")
    assert check_output_dir(ours, VIEWS_OUTPUTS) == "replace"
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(Zero123Error, match=r"holds files that `zero123 views` did not write \(notes.txt\)"):
        check_output_dir(ours, VIEWS_OUTPUTS)
    assert check_output_dir(ours, VIEWS_OUTPUTS, keep=True) == "keep"
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(Zero123Error, match="file.png is a file, not a folder"):
        check_output_dir(tmp_path / "file.png", VIEWS_OUTPUTS)
    with pytest.raises(Zero123Error, match="file.png is a file, not a folder"):
        check_output_dir(tmp_path / "file.png" / "sub" / "out", VIEWS_OUTPUTS)
    with pytest.raises(Zero123Error, match="file.png is a file, not a folder"):
        check_output_file(tmp_path / "file.png" / "eval.json")
    with pytest.raises(Zero123Error, match="is a folder; give a file name"):
        check_output_file(tmp_path / "empty")
    # to3d's layout: its files and checkpoints/ are ours, a views output is not
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("model.obj", "model.mtl", "material_0.png", "turntable.mp4", "result.json", "input.png"):
        (run / name).write_bytes(b"x")
    assert check_output_dir(run, TO3D_OUTPUTS) == "replace"
    with pytest.raises(Zero123Error, match="did not write"):
        check_output_dir(ours, TO3D_OUTPUTS, flag="--out")


def test_unwritable_folders_are_refused(tmp_path, monkeypatch):
    """A read-only folder, two ways: a real chmod 0555 (refused by os.access unless the tests run as root, which
    ignores permission bits), and os.access patched to say "no" (what a non-root user gets), which runs as root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(Zero123Error, match="is not writable"):
                check_output_dir(ro / "out", VIEWS_OUTPUTS)
        real_access = os.access
        monkeypatch.setattr(outputs.os, "access",
                            lambda p, m: False if os.path.samefile(p, ro) else real_access(p, m))
        with pytest.raises(Zero123Error, match=r"cannot write --out .*ro/out: the folder .*ro is not writable"):
            check_output_dir(ro / "out", VIEWS_OUTPUTS)
        with pytest.raises(Zero123Error, match="is not writable"):
            check_output_dir(ro, VIEWS_OUTPUTS)
        with pytest.raises(Zero123Error, match="is not writable"):
            check_output_file(ro / "eval.json")
    finally:
        ro.chmod(0o755)


# ----- commands ----------------------------------------------------------------------------------------------------
def test_views_replaces_its_earlier_output_whole(tmp_path, photo, fixtures_dir, capsys, umask):
    ckpt = str(fixtures_dir / "tiny_zero123_ldm.ckpt")
    out = tmp_path / "views"
    out.mkdir()
    for name in ("grid.png", "input_rgba.png", "view_00.png", "view_01.png", "view_02.png", "views.json"):
        (out / name).write_bytes(b"an earlier run of three views")
    (out / "view_00.png").chmod(0o600)  # as the old writer left them
    assert main(["views", str(photo), "--checkpoint", ckpt, "--steps", "2", "--out", str(out), "--azimuth", "-45"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "input_rgba.png", "mask.png", "view_00.png",
                                                     "views.json"]
    assert [v["file"] for v in json.loads((out / "views.json").read_text())["views"]] == ["view_00.png"]
    assert {mode(p) for p in out.iterdir()} == {0o644} and mode(out) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views"]  # no temporary siblings left
    capsys.readouterr()
    # someone else's file: refused before any model work (a missing checkpoint would be reported otherwise)
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    err = one_line_error(capsys, main(["views", str(photo), "--checkpoint", "missing.ckpt", "--out", str(out)]))
    assert "holds files that `zero123 views` did not write (notes.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == before
    err = one_line_error(capsys, main(["views", str(photo), "--checkpoint", "missing.ckpt", "--out", str(photo)]))
    assert "is a file, not a folder" in err


@pytest.mark.parametrize("argv, message", [
    (["to3d", "{photo}", "--checkpoint", "missing.ckpt", "--out", "{photo}"], "is a file, not a folder"),
    (["to3d", "{photo}", "--checkpoint", "missing.ckpt", "--out", "{photo}/sub"], "is a file, not a folder"),
    (["to3d", "{photo}", "--checkpoint", "missing.ckpt", "--out", "{foreign}"], "`zero123 to3d` did not write"),
    (["to3d", "{photo}", "--elevation", "10", "--out", "o"], "the photo's elevation is --input-elevation 10"),
    (["text-to-3d", "a dog", "--t2i-model", "x", "--elevation", "10", "--out", "o"], "--input-elevation 10"),
    (["convert", "missing.ckpt", "{foreign}"], "`zero123 convert` did not write"),
    (["eval", "--data", "missing", "--out", "{foreign}"], "is a folder; give a file name"),
    (["eval", "--data", "missing", "--out", "{photo}/eval.json"], "is a file, not a folder"),
    (["render-dataset", "--procedural", "1", "--out", "{photo}/data"], "is a file, not a folder"),
])
def test_bad_outputs_fail_first_in_one_line(tmp_path, photo, argv, message, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    argv = [a.format(photo=photo, foreign=foreign) for a in argv]
    err = one_line_error(capsys, main(argv))
    assert message in err
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_text_to_3d_checks_its_folder_before_loading_anything(tmp_path):
    from zero123.pipelines.text_to_3d import text_to_3d

    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(Zero123Error, match="`zero123 text-to-3d` did not write"):
        text_to_3d("a dog", object(), out_dir=tmp_path, skip_3d=True, progress=False)  # object(): never used


def test_convert_replaces_its_earlier_folder(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "model"
    args = ["convert", str(fixtures_dir / "tiny_zero123_ldm.ckpt"), str(out)]
    assert main(args) == 0
    (out / "unet" / "stale.bin").write_bytes(b"old")  # inside a folder of ours: replaced with the rest
    assert main(args) == 0
    assert not (out / "unet" / "stale.bin").exists() and (out / "model_index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
