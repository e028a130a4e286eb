"""Int8 weight storage: the per-channel round trip is within half a quantization step, bad dicts are refused,
and an int8 folder loads through the ordinary folder loader into (nearly) the same model."""

import pytest
import torch

from zero123.cli import main
from zero123.errors import CheckpointError
from zero123.loading import load_model, save_pretrained
from zero123.loading.int8_weights import SCALE_SUFFIX, dequantize_state_dict, quantize_state_dict


def test_round_trip_within_half_a_step_per_channel():
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(16, 8, 3, 3, generator=g) * torch.logspace(-3, 1, 16).view(-1, 1, 1, 1)  # scales differ
    state = {"conv.weight": conv, "lin.weight": torch.randn(64, 32, generator=g), "conv.bias": torch.randn(16),
             "small.weight": torch.randn(4, 4, generator=g), "steps": torch.tensor([3, 4])}
    q = quantize_state_dict(state, float_dtype=torch.float16)
    assert q["conv.weight"].dtype == torch.int8 and q["conv.weight" + SCALE_SUFFIX].shape == (16,)
    assert q["lin.weight"].dtype == torch.int8
    assert q["conv.bias"].dtype == torch.float16 and q["small.weight"].dtype == torch.float16  # not worth it
    assert torch.equal(q["steps"], state["steps"])
    # per output channel: scale = max |W[c]| / 127, so the largest weight of each channel maps to +-127
    assert torch.equal(q["conv.weight"].flatten(1).abs().amax(1), torch.full((16,), 127, dtype=torch.int8))
    back = dequantize_state_dict(q)
    for key in ("conv.weight", "lin.weight"):
        step = q[key + SCALE_SUFFIX].view(-1, *[1] * (state[key].ndim - 1))
        assert back[key].dtype == torch.float32 and back[key].shape == state[key].shape
        assert torch.all((back[key] - state[key]).abs() <= step / 2 + 1e-7)
    assert set(back) == set(state)
    # a float state dict passes through untouched; an int8 one is not quantized twice
    assert dequantize_state_dict(state) is state
    with pytest.raises(CheckpointError, match="already int8"):
        quantize_state_dict(q)


@pytest.mark.parametrize("break_it, message", [
    (lambda q: q.pop("w" + SCALE_SUFFIX), "has no scale"),
    (lambda q: q.pop("w"), "has no weight"),
    (lambda q: q.__setitem__("w" + SCALE_SUFFIX, torch.ones(3)), "one scale per output channel"),
])
def test_inconsistent_int8_dicts_are_refused(break_it, message):
    q = quantize_state_dict({"w": torch.randn(64, 32)})
    break_it(q)
    with pytest.raises(CheckpointError, match=message):
        dequantize_state_dict(q)


def test_int8_folder_loads_as_nearly_the_same_model(tmp_path, tiny_model, fixtures_dir):
    half = save_pretrained(tiny_model, tmp_path / "half", half=True)
    int8 = save_pretrained(tiny_model, tmp_path / "int8", half=True, int8_unet=True)
    unet_bytes = lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    assert unet_bytes(int8) < 0.6 * unet_bytes(half)
    a, b = load_model(half), load_model(int8)
    for (name, wa), (_, wb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        scale = wa.abs().flatten(1).amax(1) / 127 if wa.ndim >= 2 else torch.zeros(1)
        bound = scale.view(-1, *[1] * (wa.ndim - 1)) / 2 + 1e-3 * wa.abs()  # half a step (+ fp16 rounding)
        assert torch.all((wa - wb).abs() <= bound), name
    torch.testing.assert_close(b.vae.state_dict(), a.vae.state_dict(), atol=0, rtol=0)  # only the UNet is int8
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    token = torch.randn(2, 1, a.unet.config.cross_attention_dim, generator=g)
    concat = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        ea, eb = a.predict_noise(x, t, token, concat), b.predict_noise(x, t, token, concat)
    assert float((ea - eb).norm() / ea.norm()) < 0.02
    # the CLI: zero123 convert --half --int8
    assert main(["convert", str(fixtures_dir / "tiny_zero123_ldm.ckpt"), str(tmp_path / "cli"), "--half",
                 "--int8"]) == 0
    assert load_model(tmp_path / "cli").unet.conv_in.weight.dtype == torch.float32
