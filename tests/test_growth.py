"""Function-preserving UNet growth (zero123.models.growth) and its use in training (model.grow_unet)."""

import json

import pytest
import torch

from zero123.errors import Zero123Error
from zero123.models.configs import tiny_config
from zero123.models.growth import count_new_parameters, grow_unet, grown_unet_config


@pytest.fixture(scope="module")
def unet():
    """The tiny UNet (attention at levels 0 and 1 of 3, depth 1) with every weight non-zero, so that a zero
    output is the growth's doing, not diffusers' initialisation."""
    torch.manual_seed(0)
    u = tiny_config().build(seed=0).unet.float().eval()
    with torch.no_grad():
        for p in u.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return u


def _inputs(unet, n=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(n, 1, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([3, 900][:n]), ctx


@pytest.mark.parametrize("kw", [{"transformer_depth": 3}, {"attention_levels": [0, 1, 2]},
                                {"transformer_depth": 2, "attention_levels": [0, 1, 2]}])
def test_grown_unet_computes_the_same_function_with_more_weights(unet, kw):
    from diffusers import UNet2DConditionModel

    grown = grow_unet(unet, **kw).eval()
    x, t, ctx = _inputs(unet)
    with torch.no_grad():
        ref, out = unet(x, t, ctx).sample, grown(x, t, ctx).sample
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # the grown architecture is exactly the one its config describes, with more parameters than before
    reference = UNet2DConditionModel.from_config(grown_unet_config(unet.config, **kw))
    assert [n for n, _ in grown.named_parameters()] == [n for n, _ in reference.named_parameters()]
    extra = count_new_parameters(unet, grown)
    n_old = sum(p.numel() for p in unet.parameters())
    assert extra > 0 and sum(p.numel() for p in grown.parameters()) == n_old + extra
    # every old weight is copied unchanged
    new = dict(grown.named_parameters())
    assert all(torch.equal(p, new[n]) for n, p in unet.named_parameters())
    if "transformer_depth" in kw:
        assert grown.config.transformer_layers_per_block == kw["transformer_depth"]
        block = grown.down_blocks[1].attentions[0].transformer_blocks
        assert len(block) == kw["transformer_depth"]
        assert torch.count_nonzero(block[-1].ff.net[2].weight) == 0
        assert torch.count_nonzero(block[-1].attn1.to_q.weight) > 0  # random, not zero: it can learn
    if "attention_levels" in kw:
        assert grown.config.down_block_types[2] == "CrossAttnDownBlock2D"
        assert grown.config.up_block_types[0] == "CrossAttnUpBlock2D"
        assert torch.count_nonzero(grown.down_blocks[2].attentions[0].proj_out.weight) == 0


def test_the_new_weights_learn_and_change_the_function(unet):
    grown = grow_unet(unet, transformer_depth=2, attention_levels=[0, 1, 2]).train()
    x, t, ctx = _inputs(unet)
    target = torch.randn_like(x[:, :4])
    loss = torch.nn.functional.mse_loss(grown(x, t, ctx).sample, target)
    loss.backward()
    zeroed = [grown.down_blocks[1].attentions[0].transformer_blocks[1].ff.net[2].weight,
              grown.down_blocks[2].attentions[0].proj_out.weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in zeroed)
    with torch.no_grad():
        for p in grown.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
        assert not torch.allclose(grown.eval()(x, t, ctx).sample, unet(x, t, ctx).sample, atol=1e-4)


def test_growth_only_adds(unet):
    with pytest.raises(Zero123Error, match="below"):
        grow_unet(grow_unet(unet, transformer_depth=2), transformer_depth=1)
    with pytest.raises(Zero123Error, match="drop"):
        grow_unet(unet, attention_levels=[1])
    with pytest.raises(Zero123Error, match="outside"):
        grow_unet(unet, attention_levels=[0, 1, 5])
    same = grow_unet(unet)
    assert count_new_parameters(unet, same) == 0 and same is not unet


def test_training_from_a_grown_folder_exports_a_loadable_grown_model(tmp_path):
    """model.grow_unet in a run: the step-0 model is the loaded one's function, the export loads back with the
    grown architecture."""
    from accelerate.state import AcceleratorState, GradientState

    from zero123.loading import load_model, save_pretrained
    from zero123.training.config import config_from_dict
    from zero123.training.synthetic import write_synthetic_dataset
    from zero123.training.trainer import Trainer, build_model

    src = tiny_config().build(seed=0)
    save_pretrained(src, tmp_path / "init")
    data = write_synthetic_dataset(tmp_path / "views", num_objects=2, views_per_object=3, image_size=32,
                                   val_objects=0, seed=1)
    cfg = {"output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 2, "checkpoint_every": 0,
           "data": {"root": str(data), "num_workers": 0}, "sample": {"every": 0}, "ema": {"enabled": False},
           "optim": {"warmup_steps": 0, "lr": 1e-3},
           "model": {"init_from": str(tmp_path / "init"), "grow_unet": {"transformer_depth": 2}}}
    config = config_from_dict(cfg)
    built = build_model(config.model).eval()
    loaded = load_model(tmp_path / "init").float().eval()
    x, t, ctx = _inputs(loaded.unet)
    with torch.no_grad():
        torch.testing.assert_close(built.unet(x, t, ctx).sample, loaded.unet(x, t, ctx).sample, rtol=0, atol=1e-6)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    result = Trainer(config).train()
    exported = json.loads((result.export_dir / "unet" / "config.json").read_text())
    assert exported["transformer_layers_per_block"] == 2
    back = load_model(result.export_dir)
    assert len(back.unet.mid_block.attentions[0].transformer_blocks) == 2
    for bad, msg in [({"grow_unet": {"transformer_depth": 2}}, "needs model.init_from"),
                     ({"init_from": "x", "grow_unet": {"depth": 2}}, "unknown key"),
                     ({"init_from": "x", "grow_unet": {"transformer_depth": 0}}, "integer >= 1"),
                     ({"init_from": "x", "grow_unet": {"attention_levels": 2}}, "list of level")]:
        with pytest.raises(Zero123Error, match=msg):
            config_from_dict({"data": {"root": "r"}, "model": bad})
