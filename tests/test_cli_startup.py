"""Cold start of the command line (issue 24): the parser imports no torch / diffusers, the opt-in stage timings of
a `views` run (``ZERO123_TIMINGS``) describe that run, and the program's quick exit keeps its status and output."""

import json
import subprocess
import sys

from pathlib import Path

import pytest

from zero123.cli import build_parser, main
from zero123.utils import timing

REPO = Path(__file__).resolve().parents[1]  # examples/mug.png

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "gradio", "cv2", "onnxruntime")


def test_building_and_using_the_parser_imports_no_heavy_package():
    code = ("import sys, zero123.cli as c; p = c.build_parser(); "
            "a = p.parse_args(['views', 'x.png', '--out', 'o', '--weights-variant', 'fp16', '--azimuth', '-45,45']); "
            "assert a.azimuth == [-45.0, 45.0] and a.weights_variant == 'fp16', a; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))")
    res = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout


def test_the_parser_shows_the_single_sourced_choices():
    from zero123.evaluation.eval3d import ROWS
    from zero123.loading.folder_layouts import WEIGHT_VARIANTS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    views, eval3d = sub.choices["views"], sub.choices["eval-3d"]
    assert next(a for a in views._actions if a.dest == "weights_variant").choices == ["auto", "plain",
                                                                                      *WEIGHT_VARIANTS]
    assert next(a for a in eval3d._actions if a.dest == "rows").default == ",".join(ROWS)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from zero123.loading import save_pretrained
    from zero123.models import configs

    model = configs.tiny_config("stable_zero123").build(seed=0).eval()
    return save_pretrained(model, tmp_path_factory.mktemp("m") / "tiny_fp16", half=True)


def _views(folder, out, *extra):
    return ["views", "examples/mug.png", "-c", str(folder), "--device", "cpu", "--azimuth", "90", "180",
            "--input-elevation", "5", "--steps", "3", "--out", str(out), *extra]


def test_timings_file_lists_every_stage_of_a_views_run_inside_its_parent(tmp_path, tiny_folder, monkeypatch,
                                                                          capsys):
    report = tmp_path / "t.json"
    monkeypatch.setenv(timing.ENV, str(report))
    monkeypatch.chdir(REPO)
    assert main(_views(tiny_folder, tmp_path / "v", "--scheduler", "dpmpp")) == 0
    rows = {r["stage"]: r for r in json.loads(report.read_text())["stages"]}
    for name in ("parse arguments", "imports (torch, pipeline)", "load model", "load model / build (meta device)",
                 "load model / read + assign unet", "load model / read + assign vae",
                 "load model / read + assign image_encoder", "load model / move and cast to the device and dtype",
                 "sample views", "sample views / encode the input (CLIP, VAE)",
                 "sample views / denoise", "sample views / decode (VAE)", "write outputs"):
        assert name in rows, (name, sorted(rows))
    ends = {n: r["start_s"] + r["seconds"] for n, r in rows.items()}
    # a nested stage lies inside its parent; top-level stages follow one another (each figure rounded to 1 ms)
    for name, r in rows.items():
        if " / " in name:
            parent = rows[name.rsplit(" / ", 1)[0]]
            assert parent["start_s"] <= r["start_s"] + 1e-3 and ends[name] <= ends[parent["stage"]] + 2e-3
    top = sorted((r for n, r in rows.items() if " / " not in n), key=lambda r: r["start_s"])
    for a, b in zip(top, top[1:]):  # each figure is rounded to 1 ms: an end may pass the next start by 1.5 ms
        assert a["start_s"] + a["seconds"] <= b["start_s"] + 2e-3
    assert (tmp_path / "v" / "view_01.png").is_file() and "stage" not in capsys.readouterr().err
    assert timing.report()["stages"] == []  # emitted and cleared: a second main() in this process starts afresh


def test_no_timings_without_the_variable_and_a_table_with_1(tmp_path, tiny_folder, monkeypatch):
    monkeypatch.delenv(timing.ENV, raising=False)
    with timing.stage("x"):
        pass
    assert timing.report()["stages"] == []
    monkeypatch.setenv(timing.ENV, "1")
    res = subprocess.run([sys.executable, "-m", "zero123.cli", *_views(tiny_folder, tmp_path / "v")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-500:]
    table = [ln for ln in res.stderr.splitlines() if ln.startswith(("load model", "total", "process start"))]
    assert table[0].startswith("process start -> first stage") and table[-1].startswith("total")
    assert "wrote 2 views" in res.stdout  # the quick exit flushed stdout


@pytest.mark.parametrize("argv, rc, stream, text", [
    (["--version"], 0, "stdout", "zero123 0.1.0"),
    (["views"], 2, "stderr", "required"),
])  # (Zero123Error's one line and status 2 through the program: tests/test_views_cli.py runs `python -m zero123.cli`)
def test_the_program_exits_with_mains_status_and_flushed_output(argv, rc, stream, text, tmp_path):
    res = subprocess.run([sys.executable, "-m", "zero123.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == rc and text in getattr(res, stream), res
    assert "Traceback" not in res.stderr
