"""The to3d presets: pinned values (taken from the Python if-chains before the presets became YAML data)."""

import json
from pathlib import Path

import pytest

from zero123.pipelines.image_to_3d_config import PRESETS, ImageTo3DConfig, preset_config

PINNED = json.loads((Path(__file__).parent / "data" / "to3d_presets.json").read_text())


def _typed(x):
    """A JSON-comparable copy that keeps int vs float vs bool apart (``64 == 64.0`` in plain dict equality)."""
    if isinstance(x, dict):
        return {k: _typed(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_typed(v) for v in x]
    return [type(x).__name__, x]


def _case(key):
    name, _, extra = key.partition("@")
    if name == "auto":
        return preset_config("auto", device=extra)
    if extra.startswith("steps="):
        return preset_config(name, steps=int(extra.split("=")[1]))
    return preset_config(name)


def test_every_preset_is_pinned():
    assert set(PRESETS) <= set(PINNED)


@pytest.mark.parametrize("key", sorted(PINNED))
def test_preset_values_unchanged(key):
    cfg = _case(key)
    assert _typed(cfg.to_dict()) == _typed(PINNED[key]["dict"])
    assert repr(cfg) == PINNED[key]["repr"]          # tuples stay tuples, ints stay ints
    assert ImageTo3DConfig.from_dict(cfg.to_dict()) == cfg   # a resumed run's saved cfg loads back


# ----- presets as data ---------------------------------------------------------------------------------------------
PRESET_DIR = Path(__import__("zero123").__file__).parent / "assets" / "presets"


def test_one_yaml_per_preset_and_default_yaml_is_the_dataclass_defaults():
    from zero123.utils.dataclass_config import read_config_file

    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)
    default = ImageTo3DConfig.from_dict(read_config_file(PRESET_DIR / "default.yaml"))
    assert repr(default) == repr(ImageTo3DConfig())          # every key spelled out, equal to the code's defaults
    assert set(read_config_file(PRESET_DIR / "default.yaml")) == set(ImageTo3DConfig().to_dict())


def test_config_file_then_overrides_then_steps_on_top_of_a_preset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("cameras:\n  fovy: 30\n  resolutions: [16]\nsds:\n  guidance_scale: 5\n")
    cfg = preset_config("tiny", config_file=f, overrides=["cameras.fovy=25", "losses.sds=[0, 0.1, 0.2, 600]",
                                                          "export.mesh.threshold=0.5"], steps=7)
    tiny = preset_config("tiny")
    assert cfg.cameras.fovy == 25.0 and cfg.sds.guidance_scale == 5.0 and cfg.steps == 7
    assert cfg.losses.sds == (0, 0.1, 0.2, 600) and cfg.export.mesh.threshold == 0.5
    assert cfg.cameras.resolutions == (16,) and isinstance(cfg.cameras.resolutions, tuple)
    # everything not named keeps the preset's value (sections merge, they are not replaced)
    assert cfg.cameras.batch_sizes == tiny.cameras.batch_sizes and cfg.field == tiny.field
    assert cfg.export.mesh.resolution == tiny.export.mesh.resolution
    assert preset_config("tiny", overrides=["export.mesh.threshold=auto"]).export.mesh.threshold == "auto"


@pytest.mark.parametrize("text, overrides, message", [
    ("cameras:\n  fov: 30\n", (), "unknown key cameras.fov"),
    ("stepz: 3\n", (), "unknown key stepz"),
    ("", ["cameras.resolutions=[16, 32]"], "camera schedule needs 1 resolutions"),
    ("", ["steps=many"], "steps must be an integer"),
    ("", ["optimizer.betas=[0.9]"], "optimizer.betas must be a list of 2 values"),
    ("", ["reference.recentre=3"], "reference.recentre must be true or false"),
    ("[1, 2]\n", (), "top level must be a mapping"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path, text, overrides, message):
    from zero123.errors import Zero123Error

    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(Zero123Error, match=message) as info:
        preset_config("tiny", config_file=f, overrides=overrides)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(f)) == bool(text.strip())   # the file is named only for its own errors


def test_cli_print_config_and_errors(tmp_path, capsys):
    import yaml

    from zero123.cli import main

    f = tmp_path / "mine.yaml"
    f.write_text("render:\n  num_samples_per_ray: 48\n")
    out = tmp_path / "out"
    assert main(["to3d", "nothing.png", "--out", str(out), "--preset", "tiny", "--config", str(f),
                 "--set", "cameras.fovy=25", "--steps", "3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = preset_config("tiny", overrides=["render.num_samples_per_ray=48", "cameras.fovy=25"], steps=3)
    assert ImageTo3DConfig.from_dict(printed) == expected and not out.exists()
    # a printed config is a valid --config file: it reproduces the run's config from any preset
    f.write_text(yaml.safe_dump(printed))
    assert preset_config("default", config_file=f) == expected
    assert main(["to3d", "nothing.png", "--out", str(out), "--set", "cameras.fov=1"]) == 2
    assert "unknown key cameras.fov" in capsys.readouterr().err
    assert main(["to3d", "nothing.png", "--out", str(out), "--resume", str(out), "--set", "steps=2"]) == 2
    assert "--resume" in capsys.readouterr().err


# ----- the bundled model's GPU preset and `--preset auto` ------------------------------------------------------
def test_auto_picks_the_bundled_preset_for_the_bundled_model_on_a_gpu_only():
    from zero123.errors import Zero123Error

    assert preset_config("auto", device="cuda", bundled=True).preset == "bundled"
    assert preset_config("auto", device="cuda").preset == "default"             # another checkpoint: the recipe
    assert preset_config("auto", device="cpu", bundled=True).preset == "cpu"
    # the Gaussians have no bundled preset: auto keeps theirs, and naming it is a one-line error
    assert preset_config("auto", device="cuda", bundled=True, representation="gaussians").preset == "default"
    with pytest.raises(Zero123Error, match="preset bundled is for the NeRF"):
        preset_config("bundled", representation="gaussians")


def test_is_bundled_model_and_the_to3d_cli_auto_preset(tmp_path, capsys, fixtures_dir):
    from zero123.cli import main
    from zero123.loading import bundled_model_path, is_bundled_model, load_model

    assert is_bundled_model(None) and is_bundled_model(bundled_model_path())
    assert load_model(fixtures_dir / "tiny_zero123_ldm.ckpt").bundled is False
    assert is_bundled_model(str(bundled_model_path()) + "/") and not is_bundled_model(tmp_path)
    img = tmp_path / "x.png"
    __import__("PIL.Image").Image.new("RGBA", (8, 8)).save(img)
    picked = []
    for extra in ([], ["--checkpoint", str(tmp_path)]):
        assert main(["to3d", str(img), "--out", str(tmp_path / "o"), "--device", "cuda", "--print-config"] + extra) == 0
        picked.append(__import__("yaml").safe_load(capsys.readouterr().out)["preset"])
    assert picked == ["bundled", "default"]


def test_eval3d_model_row_picks_auto_as_to3d_does(monkeypatch):
    """eval-3d's model row with `--preset auto` gets the preset to3d would: the bundled model's on a GPU."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    import zero123.pipelines.image_to_3d as pipeline
    from zero123.evaluation import eval3d

    seen = []

    def fake_to3d(*args, **kwargs):
        seen.append(kwargs["config"].preset)
        raise KeyError("stop")

    monkeypatch.setattr(pipeline, "to3d", fake_to3d)
    cfg = eval3d.Eval3DConfig(preset="auto").validate()
    for device, bundled in (("cuda", True), ("cuda", False), ("cpu", True)):
        with pytest.raises(KeyError):
            eval3d._model_mesh(SimpleNamespace(device=torch.device(device), bundled=bundled),
                               np.zeros((8, 8, 4), np.uint8), cfg, None)
    assert seen == ["bundled", "default", "cpu"]
    # evaluate_3d records the resolved preset in its cache key by the same rule
    assert [cfg.resolved(d, bundled=b).preset for d, b in (("cuda", True), ("cuda", False), ("cpu", True))] == \
        ["bundled", "default", "cpu"]
    gauss = eval3d.Eval3DConfig(preset="auto", representation="gaussians").validate()
    assert gauss.resolved("cuda", bundled=True).preset == "default"  # the Gaussians have no bundled preset
