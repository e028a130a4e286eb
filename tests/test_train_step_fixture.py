"""Our training objective against one training step of the original zero123 code (``zero123_train_step``), and
fine-tuning's start as the original's (plain weights, the checkpoint's EMA as the EMA's start)."""

import pytest
import torch
from safetensors.torch import load_file

from zero123.loading import load_model
from zero123.models.camera_projection import CameraProjection
from zero123.training.config import ModelConfig
from zero123.training.trainer import DiffusionObjective, apply_cfg_dropout, build_model, start_ema_from_checkpoint

GRADS = {"grad_cc_projection_weight": "camera_projection.projection.weight",
         "grad_cc_projection_bias": "camera_projection.projection.bias",
         "grad_unet_input_conv_weight": "unet.conv_in.weight", "grad_unet_input_conv_bias": "unet.conv_in.bias",
         "grad_unet_out_conv_weight": "unet.conv_out.weight"}


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return load_file(str(fixtures_dir / "zero123_train_step" / "train_ref.safetensors"))


@pytest.fixture(scope="module")
def ckpt(fixtures_dir):
    return fixtures_dir / "tiny_zero123_ldm.ckpt"


def test_objective_reproduces_the_original_training_step(ref, ckpt):
    u = ref["draw1_dropout_u"]
    # the batch holds the four dropout cases: CLIP only, both, concat only, none
    assert u.tolist() == pytest.approx([0.02, 0.07, 0.12, 0.5])
    model = build_model(ModelConfig(init_from=str(ckpt)))  # plain weights, as the original trains
    model.unet.requires_grad_(True)  # the parts the trainer trains (Trainer.setup)
    model.camera_projection.requires_grad_(True)
    objective = DiffusionObjective(model).train()
    bchw = lambda x: x.permute(0, 3, 1, 2).contiguous()  # noqa: E731 (the loader's BHWC layout)
    target, cond = bchw(ref["image_target"]), bchw(ref["image_cond"])
    with torch.no_grad():  # the conditioning of each dropout case
        clip, concat = apply_cfg_dropout(model.clip_embedding(cond).float(), model.concat_latent(cond).float(), u)
        token, concat = model.conditioning(cond, ref["T"], clip_embedding=clip, concat_latent=concat)
    for i in range(4):
        assert _rel(token[i], ref["c_crossattn"][i]) < 1e-4, i
        if i == 2 or i == 1:
            assert torch.count_nonzero(concat[i]) == 0 and torch.count_nonzero(ref["c_concat"][i]) == 0
        else:
            assert _rel(concat[i], ref["c_concat"][i]) < 1e-4, i
    out = objective(target, cond, ref["T"], noise=ref["draw3_noise"], posterior_noise=ref["draw0_posterior_randn"],
                    timesteps=ref["draw2_timesteps"], dropout_u=u)
    out["loss"].backward()
    assert abs(float(out["loss"].detach()) - float(ref["loss"])) < 1e-4 * float(ref["loss"])
    params = dict(model.named_parameters())
    for ref_name, name in GRADS.items():
        assert _rel(params[name].grad, ref[ref_name]) < 1e-4, name


def test_init_weights_plain_or_ema_and_the_ema_start(ckpt):
    plain, ema = load_model(ckpt, use_ema=False), load_model(ckpt)
    p_unet, e_unet = plain.unet.state_dict(), ema.unet.state_dict()
    assert any(not torch.equal(p_unet[k], e_unet[k]) for k in p_unet)  # the fixture's copies differ
    for init_weights, want in (("plain", p_unet), ("ema", e_unet)):
        cfg = ModelConfig(init_from=str(ckpt), init_weights=init_weights)
        model = build_model(cfg)
        got = model.unet.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), init_weights
    # the EMA average starts from the checkpoint's EMA UNet; cc_projection (not covered by LitEma) from the weights
    from diffusers.training_utils import EMAModel

    cfg = ModelConfig(init_from=str(ckpt))
    objective = DiffusionObjective(build_model(cfg))
    named = [(n, p) for n, p in objective.named_parameters() if n.startswith(("model.unet.", "model.camera_"))]
    avg = EMAModel([p for _, p in named])
    assert start_ema_from_checkpoint(avg, named, cfg)
    shadow = {n: s for (n, _), s in zip(named, avg.shadow_params)}
    assert all(torch.equal(shadow["model.unet." + k], e_unet[k]) for k in e_unet)
    assert torch.equal(shadow["model.camera_projection.projection.weight"],
                       plain.camera_projection.projection.weight)
    assert not start_ema_from_checkpoint(avg, named, ModelConfig(init_from=str(ckpt), init_weights="ema"))


def test_new_cc_projection_is_initialised_as_the_original():
    torch.manual_seed(3)
    ours = CameraProjection(embed_dim=16)
    ours.identity_init()
    torch.manual_seed(3)
    original = torch.nn.Linear(20, 16)  # ddpm.py: nn.Linear(772, 768), eye_ on weight[:768, :768], zeros_ on bias
    torch.nn.init.eye_(list(original.parameters())[0][:16, :16])
    torch.nn.init.zeros_(list(original.parameters())[1])
    assert torch.equal(ours.projection.weight, original.weight) and torch.equal(ours.projection.bias, original.bias)
    assert torch.count_nonzero(ours.projection.weight[:, 16:]) == 16 * 4  # the camera columns are not zeroed


def test_init_weights_is_checked():
    from zero123.errors import Zero123Error
    from zero123.training.config import config_from_dict

    with pytest.raises(Zero123Error, match="model.init_weights must be one of plain, ema"):
        config_from_dict({"data": {"root": "r"}, "model": {"init_from": "x.ckpt", "init_weights": "best"}})
