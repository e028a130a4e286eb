"""A checkpoint with EVERY key and shape of a real Zero123 checkpoint (spec/zero123_ldm_keys.tsv) loads.

Tensors are zero-stride views of one small storage, so the 1938-key, 2.5 G-element checkpoint is a few kB on disk.
"""

import pytest
import torch

from zero123.errors import CheckpointError
from zero123.loading import load_model
from zero123.models.configs import full_size_config
from zero123.schedulers import alphas_cumprod

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32, "int64": torch.int64}


def read_key_list(spec_dir):
    rows = []
    for line in (spec_dir / "zero123_ldm_keys.tsv").read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        rows.append((key, dims, DTYPES[dtype]))
    return rows


def build_state_dict(rows):
    base = {dt: torch.full((1,), 0.01, dtype=dt) for dt in DTYPES.values()}
    sd = {}
    for key, dims, dt in rows:
        sd[key] = base[dt].reshape(()).expand(dims) if dims else base[dt].reshape(())
    sd["alphas_cumprod"] = alphas_cumprod()  # the schedule is checked, so give the real one
    return sd


@pytest.fixture(scope="module")
def rows(spec_dir):
    rows = read_key_list(spec_dir)
    assert len(rows) == 1938
    return rows


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("full") / "zero123-xl.ckpt"
    torch.save({"state_dict": build_state_dict(rows), "global_step": 105000}, path)
    assert path.stat().st_size < 5_000_000
    return path


def test_every_key_is_used_or_explicitly_ignored(full_ckpt, rows):
    model, report = load_model(full_ckpt, return_report=True)
    keys = {k for k, _, _ in rows}
    used = keys - set(report.ignored)
    assert set(report.ignored) <= keys
    reasons = {}
    for k, r in report.ignored.items():
        reasons.setdefault(r, set()).add(k)
    assert len(reasons["CLIP text tower (unused by Zero123)"]) == 6
    assert len(reasons["noise-schedule buffer (checked, recomputed)"]) == 12
    assert len(reasons["EMA bookkeeping"]) == 2
    assert len(reasons["plain UNet weight; the EMA copy is used"]) == 686
    assert len(used) == 1938 - 706
    params = model.num_parameters()
    assert round(params["unet"] / 1e6, 1) == 859.5
    assert round(params["vae"] / 1e6, 1) == 83.7
    assert round(params["image_encoder"] / 1e6, 1) == 304.0
    assert params["camera_projection"] == 768 * 772 + 768
    full = full_size_config()
    assert report.config.unet == full.unet and report.config.vae == full.vae and report.config.clip == full.clip
    assert report.variant == "zero123" and report.extra["global_step"] == 105000


def test_variant_from_name(tmp_path, full_ckpt):
    renamed = tmp_path / "stable_zero123.ckpt"
    renamed.symlink_to(full_ckpt)
    assert load_model(renamed, return_report=True)[1].variant == "stable_zero123"


@pytest.mark.parametrize("mutation, message", [
    ("drop:first_stage_model.decoder.conv_out.weight", "VAE is missing 1 weights"),
    ("drop:model_ema.diffusion_modelout2weight", "incomplete EMA weights"),
    ("add:some_other_model.weight", "unexpected keys some_other_model.weight"),
    ("shape:cc_projection.weight", "cc_projection has shape"),
    ("shape:first_stage_model.decoder.conv_out.bias", "VAE weight decoder.conv_out.bias has shape"),
    ("drop:cc_projection.weight", "no camera projection"),
])
def test_broken_checkpoints_are_named(tmp_path, rows, mutation, message):
    sd = build_state_dict(rows)
    kind, key = mutation.split(":", 1)
    if kind == "drop":
        del sd[key]
    elif kind == "add":
        sd[key] = torch.zeros(3)
    else:
        sd[key] = torch.zeros(tuple(d + 1 for d in sd[key].shape))
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "\n" not in str(info.value)
