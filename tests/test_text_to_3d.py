"""Text-to-3D: the whole command on a tiny random SDXL (64 px, 2 steps) and, for the 3D stage, a tiny Zero123."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_text2image import TINY_SIZE, build_tiny_sdxl  # noqa: E402  (tests/ is on sys.path under pytest)
from zero123.cli import main
from zero123.errors import Zero123Error
from zero123.pipelines.text_to_3d import (INPUT_RGBA_NAME, choose_candidate, rerun_command, score_candidates,
                                          text_to_3d)
from zero123.preprocessing import recenter
from zero123.pipelines.text2image import TextToImage


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("t23d") / "tiny-sdxl")


@pytest.fixture(scope="module")
def t2i(sdxl_dir) -> TextToImage:
    return TextToImage.from_pretrained(sdxl_dir, device="cpu")


def disc_mask(image: Image.Image, cx=0.5, cy=0.5, r=0.3) -> np.ndarray:
    """A stand-in matting model: a disc mask (fractions of the frame), whatever the image shows."""
    w, h = image.size
    yy, xx = np.mgrid[0:h, 0:w]
    return (((xx + 0.5) / w - cx) ** 2 + ((yy + 0.5) / h - cy) ** 2 <= r ** 2).astype(np.float32)


def _scene(kind: str, size: int = 64) -> Image.Image:
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "good":
        img[(xx - 32) ** 2 + (yy - 32) ** 2 <= 14 ** 2] = (200, 60, 30)
    elif kind == "cut":
        img[(xx - 32) ** 2 + (yy - 2) ** 2 <= 16 ** 2] = (200, 60, 30)
    elif kind == "two":
        img[(xx - 18) ** 2 + (yy - 32) ** 2 <= 9 ** 2] = (200, 60, 30)
        img[(xx - 46) ** 2 + (yy - 32) ** 2 <= 9 ** 2] = (30, 60, 200)
    elif kind == "noise":
        img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(img)


# ----- choosing a candidate ---------------------------------------------------------------------------------------
def test_score_and_choose_with_plain_background_segmentation():
    images = [_scene(k) for k in ("noise", "cut", "two", "good")]
    masks, scores = score_candidates(images, segmentation="plain")
    assert masks[0] is None and "plain background" in scores[0]["error"] and scores[0]["score"] == 0.0
    assert scores[1]["border_contact"] > 0 and scores[2]["largest_component"] == pytest.approx(0.5, abs=0.02)
    assert scores[3]["score"] == pytest.approx(1.0) and masks[3].shape == (64, 64)
    assert choose_candidate(scores) == (3, "score")
    assert choose_candidate(scores, pick=1) == (1, "pick")
    with pytest.raises(Zero123Error, match="candidate 0 has no usable foreground"):
        choose_candidate(scores, pick=0)
    with pytest.raises(Zero123Error, match="out of range"):
        choose_candidate(scores, pick=4)
    with pytest.raises(Zero123Error, match="none of the 2 generated images"):
        choose_candidate([scores[0], scores[0]])
    assert choose_candidate([{"score": 0.5}, {"score": 0.5}]) == (0, "score")  # ties -> lowest index
    assert choose_candidate([{"score": 0.1}]) == (0, "only")


def test_rerun_command():
    cmd = rerun_command(Path("/tmp/my out"), "sz.ckpt", preset="fast", steps=100, seed=3, input_elevation=10.0)
    assert cmd == ("zero123 to3d '/tmp/my out/input_rgba.png' --out '/tmp/my out' --checkpoint sz.ckpt "
                   "--preset fast --steps 100 --seed 3 --input-elevation 10.0")


# ----- the API, image stages --------------------------------------------------------------------------------------
def test_api_image_stages_pick_and_files(t2i, tmp_path):
    out = tmp_path / "out"
    res = text_to_3d("a red apple", t2i, out_dir=out, t2i_steps=2, t2i_size=TINY_SIZE, num_candidates=3, pick=2,
                     seed=5, matting_model=lambda im: disc_mask(im, cx=0.45), rgba_size=96, skip_3d=True,
                     progress=False)
    assert [p.name for p in res.candidates] == ["00.png", "01.png", "02.png"]
    assert (res.chosen, res.chosen_by) == (2, "pick")
    # candidate i is the text-to-image output for seed 5 + i
    direct = t2i.generate("a red apple", seed=7, steps=2, size=TINY_SIZE)[0]
    cand2 = Image.open(res.candidates[2])
    assert np.array_equal(np.asarray(cand2), np.asarray(direct))
    # input_rgba.png is the recentred chosen candidate, transparent outside the object
    rgba = Image.open(res.input_rgba)
    assert rgba.mode == "RGBA" and rgba.size == (96, 96)
    expected = recenter(cand2.convert("RGB"), disc_mask(cand2, cx=0.45), size=96)
    assert np.array_equal(np.asarray(rgba), np.asarray(expected))
    alpha = np.asarray(rgba)[..., 3]
    assert alpha[0, 0] == 0 and alpha[48, 48] == 255
    mask0 = np.asarray(Image.open(out / "candidates" / "00_mask.png"))
    assert np.array_equal(mask0 > 127, disc_mask(cand2, cx=0.45) > 0.5)
    scores = json.loads(res.scores_path.read_text())
    assert scores["chosen"] == 2 and len(scores["candidates"]) == 3
    assert scores["text_to_image"]["full_prompt"].startswith("a 3D render of a red apple")
    assert scores["text_to_image"]["steps"] == 2 and scores["text_to_image"]["seed"] == 5
    summary = json.loads(res.summary_path.read_text())
    assert summary["input_rgba"] == str(out / INPUT_RGBA_NAME) and summary["result_3d"] is None
    assert res.rerun_command.startswith(f"zero123 to3d {out / INPUT_RGBA_NAME}")


def test_api_validates_before_loading(t2i, tmp_path):
    with pytest.raises(Zero123Error, match="--num-candidates"):
        text_to_3d("a cup", t2i, out_dir=tmp_path, num_candidates=0, skip_3d=True)
    with pytest.raises(Zero123Error, match="--pick 3 is out of range"):
        text_to_3d("a cup", t2i, out_dir=tmp_path, num_candidates=2, pick=3, skip_3d=True)
    with pytest.raises(Zero123Error, match="must contain"):
        text_to_3d("a cup", t2i, out_dir=tmp_path, prompt_template="no placeholder", skip_3d=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(Zero123Error, match="is a file"):
        text_to_3d("a cup", t2i, out_dir=tmp_path / "file", skip_3d=True)
    with pytest.raises(Zero123Error, match="text-to-image model not found"):
        text_to_3d("a cup", tmp_path / "nope", out_dir=tmp_path / "o", skip_3d=True)
    with pytest.raises(Zero123Error, match="checkpoint not found"):  # before minutes of text-to-image
        text_to_3d("a cup", t2i, tmp_path / "missing.ckpt", out_dir=tmp_path / "o")
    with pytest.raises(Zero123Error, match="unknown preset"):
        text_to_3d("a cup", t2i, out_dir=tmp_path / "o", preset="ultra")
    with pytest.raises(Zero123Error, match="elevation"):
        text_to_3d("a cup", t2i, out_dir=tmp_path / "o", input_elevation=120.0)
    assert not (tmp_path / "o").exists()


def test_rerun_into_same_folder_and_3d_failure_keeps_images(t2i, tmp_path):
    out = tmp_path / "o"
    kw = dict(out_dir=out, t2i_steps=1, t2i_size=TINY_SIZE, matting_model=disc_mask, rgba_size=64, progress=False)
    text_to_3d("a cup", t2i, num_candidates=3, skip_3d=True, **kw)
    assert sorted(p.name for p in (out / "candidates").glob("*.png"))[-1] == "02_mask.png"
    with pytest.raises(Zero123Error) as e:  # the 3D stage fails (nothing to resume): the hint is in the message
        text_to_3d("a cup", t2i, num_candidates=1, resume=tmp_path / "no-such-run", **kw)
    msg = str(e.value)
    assert "\n" not in msg and "no image-to-3D checkpoint" in msg and f"zero123 to3d {out / INPUT_RGBA_NAME}" in msg
    assert sorted(p.name for p in (out / "candidates").glob("*.png")) == ["00.png", "00_mask.png"]
    summary = json.loads((out / "text_to_3d.json").read_text())
    assert summary["chosen"] == 0 and len(summary["candidates"]) == 1 and summary["result_3d"] is None


# ----- the command line -------------------------------------------------------------------------------------------
def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zero123: error: ") and "\n" not in err, err
    return err


def test_cli_bad_t2i_model_is_one_line(capsys, tmp_path, sdxl_dir):
    err = _cli_error(capsys, ["text-to-3d", "a cup", "--t2i-model", str(tmp_path / "missing"), "--out",
                              str(tmp_path / "o")])
    assert "text-to-image model not found" in err
    err = _cli_error(capsys, ["text-to-3d", "a cup", "--t2i-model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "no model_index.json" in err
    err = _cli_error(capsys, ["text-to-3d", "a cup", "--t2i-model", str(sdxl_dir / "unet"), "--out",
                              str(tmp_path / "o")])
    assert "no model_index.json" in err
    err = _cli_error(capsys, ["text-to-3d", "a cup", "--t2i-model",
                              str(sdxl_dir / "unet" / "diffusion_pytorch_model.safetensors"), "--out",
                              str(tmp_path / "o")])
    assert "not an SDXL checkpoint" in err
    assert not (tmp_path / "o").exists()


def test_cli_image_stages_with_onnx_matting(capsys, tmp_path, sdxl_dir):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'zero123[matting]')")
    pytest.importorskip("onnx", reason="onnx is needed to export the test matting model")
    from test_matting import CentredDisc, export_onnx

    onnx_path = export_onnx(CentredDisc(32), tmp_path / "u2net_disc.onnx")
    out = tmp_path / "dog"
    rc = main(["text-to-3d", "a friendly dog", "--t2i-model", str(sdxl_dir), "--t2i-steps", "2", "--t2i-size",
               str(TINY_SIZE), "--num-candidates", "2", "--matting-model", str(onnx_path), "--matting-kind", "isnet",
               "--rgba-size", "64",
               "--no-3d", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"rerun only the 3D stage: zero123 to3d {out / 'input_rgba.png'}" in printed
    for name in ("candidates/00.png", "candidates/01.png", "candidates/00_mask.png", "candidates/scores.json",
                 "input_rgba.png", "text_to_3d.json"):
        assert (out / name).is_file(), name
    scores = json.loads((out / "candidates" / "scores.json").read_text())
    assert scores["chosen"] == 0 and scores["chosen_by"] == "score"  # equal masks: the tie goes to 00
    assert scores["candidates"][0]["largest_component"] == 1.0 and scores["candidates"][0]["border_contact"] == 0.0
    assert "OnnxMattingModel" in scores["matting"] and "kind='isnet'" in scores["matting"]
    rgba = np.asarray(Image.open(out / "input_rgba.png"))
    assert rgba.shape == (64, 64, 4)
    ys, xs = np.nonzero(rgba[..., 3] > 127)
    assert ys.max() - ys.min() + 1 in range(49, 54)  # the disc's diameter is 0.8 of the frame after recentring
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


# ----- all three stages -------------------------------------------------------------------------------------------
def _check_mesh_outputs(out: Path) -> None:
    import trimesh

    for name in ("model.obj", "model.glb", "model.ply", "turntable.mp4", "input_rgba.png", "text_to_3d.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("model.glb", "model.ply", "model.obj"):
        mesh = trimesh.load(out / name, force="mesh")
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0, name
    rgba = Image.open(out / "input_rgba.png")
    assert rgba.mode == "RGBA" and np.asarray(rgba)[..., 3].min() == 0


def test_api_all_stages_with_loaded_model(t2i, tmp_path):
    from zero123.models.configs import tiny_config

    model = tiny_config("stable_zero123").build(seed=0).eval()
    out = tmp_path / "apple"
    res = text_to_3d("a red apple", t2i, out_dir=out, t2i_steps=2, t2i_size=TINY_SIZE, matting_model=disc_mask,
                     rgba_size=64, preset="tiny", steps=2, model=model, progress=False)
    _check_mesh_outputs(out)
    assert res.result_3d.steps == 2 and res.result_3d.glb == out / "model.glb"
    summary = json.loads(res.summary_path.read_text())
    assert summary["result_3d"]["glb"] == str(out / "model.glb")
    assert set(res.timings) >= {"t2i_generate_s", "matting_s", "to3d_s", "total_s"}


def test_cli_all_stages_with_saved_checkpoint(capsys, tmp_path, sdxl_dir):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'zero123[matting]')")
    pytest.importorskip("onnx", reason="onnx is needed to export the test matting model")
    from test_matting import CentredDisc, export_onnx
    from zero123.loading import save_pretrained
    from zero123.models.configs import tiny_config

    ckpt = save_pretrained(tiny_config("stable_zero123").build(seed=0).eval(), tmp_path / "tiny-z123")
    onnx_path = export_onnx(CentredDisc(32), tmp_path / "u2net_disc.onnx")
    out = tmp_path / "dog"
    argv = ["text-to-3d", "a friendly dog", "--t2i-model", str(sdxl_dir), "--t2i-steps", "2", "--t2i-size",
            str(TINY_SIZE), "--matting-model", str(onnx_path), "--rgba-size", "64", "--checkpoint", str(ckpt),
            "--preset", "tiny", "--steps", "2", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    _check_mesh_outputs(out)
    hint = next(line for line in printed.splitlines() if line.startswith("rerun only the 3D stage: "))
    assert hint.endswith(f"zero123 to3d {out / 'input_rgba.png'} --out {out} --checkpoint {ckpt} "
                         "--preset tiny --steps 2")
    assert f"glb: {out / 'model.glb'}" in printed
    # the hint really reruns only the 3D stage, on the kept image
    import shlex

    (out / "model.glb").unlink()
    assert main(shlex.split(hint.split(": ", 1)[1])[1:]) == 0
    assert (out / "model.glb").is_file() and (out / "candidates" / "00.png").is_file()
