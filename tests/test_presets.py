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
