"""The Zero123 training objective: CFG dropout, the loss against an independent computation, per-draw noise,
warm-up, which parameters learn."""

import math

import pytest
import torch

from zero123.errors import Zero123Error
from zero123.models.configs import tiny_config
from zero123.schedulers import make_ddpm_scheduler
from zero123.training.config import config_from_dict
from zero123.training.trainer import (DiffusionObjective, apply_cfg_dropout, cfg_dropout_masks, decay_factor,
                                      draw_noise, min_snr_weights, vae_reconstruction_loss, warmup_factor)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than 2 threads on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cfg_dropout_probabilities_match_zero123():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2_000_000, generator=g)
    clip, concat = cfg_dropout_masks(u, 0.05)
    frac = lambda m: m.float().mean().item()  # noqa: E731
    assert frac(clip) == pytest.approx(0.10, abs=1.5e-3)
    assert frac(concat) == pytest.approx(0.10, abs=1.5e-3)
    assert frac(clip & concat) == pytest.approx(0.05, abs=1e-3)
    assert frac(clip & ~concat) == pytest.approx(0.05, abs=1e-3)
    assert frac(~clip & concat) == pytest.approx(0.05, abs=1e-3)
    assert frac(~clip & ~concat) == pytest.approx(0.85, abs=1.5e-3)
    # the exact rule of ldm's LatentDiffusion.get_input: prompt u < 2p, input p <= u < 3p
    u = torch.tensor([0.0, 0.0499, 0.05, 0.0999, 0.1, 0.1499, 0.15, 0.9])
    clip, concat = cfg_dropout_masks(u, 0.05)
    assert clip.tolist() == [True, True, True, True, False, False, False, False]
    assert concat.tolist() == [False, False, True, True, True, True, False, False]
    assert not cfg_dropout_masks(torch.rand(1000, generator=g), 0.0)[0].any()


def test_apply_cfg_dropout_zeroes_only_the_chosen_samples():
    clip, concat = torch.randn(4, 1, 8) + 3, torch.randn(4, 4, 2, 2) + 3
    u = torch.tensor([0.01, 0.07, 0.12, 0.5])
    c2, z2 = apply_cfg_dropout(clip, concat, u, 0.05)
    assert torch.all(c2[:2] == 0) and torch.equal(c2[2:], clip[2:])
    assert torch.equal(z2[0], concat[0]) and torch.all(z2[1:3] == 0) and torch.equal(z2[3], concat[3])


@pytest.fixture(scope="module")
def model():
    return tiny_config().build(seed=0).train()


def _batch(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = model.unet.config.sample_size
    return dict(target=torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
                cond=torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
                camera=torch.randn(n, 4, generator=g), noise=torch.randn(n, 4, h, h, generator=g),
                posterior_noise=torch.randn(n, 4, h, h, generator=g),
                timesteps=torch.tensor([5, 500, 999][:n]), dropout_u=torch.ones(n))


def test_loss_equals_independent_computation(model):
    b = _batch(model)
    loss = DiffusionObjective(model)(**b)["loss"]
    with torch.no_grad():
        dist = model.vae.encode(b["target"]).latent_dist
        z0 = (dist.mean + dist.std * b["posterior_noise"]) * model.scaling_factor
        noisy = make_ddpm_scheduler().add_noise(z0, b["noise"], b["timesteps"])
        token, concat = model.conditioning(b["cond"], b["camera"])  # the sampling path's conditioning
        eps = model.predict_noise(noisy, b["timesteps"], token, concat)
    expected = ((eps - b["noise"]) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    # encode_latents with the same posterior noise (diffusers samples mean + std * randn)
    torch.testing.assert_close(z0, dist.mean * model.scaling_factor + dist.std * model.scaling_factor
                               * b["posterior_noise"])


def test_min_snr_weights_match_diffusers_compute_snr():
    from diffusers.training_utils import compute_snr

    sched = make_ddpm_scheduler()
    t = torch.arange(0, 1000, 7)
    for gamma in (1.0, 5.0):
        snr = compute_snr(sched, t)  # diffusers' training helper, an independent SNR computation
        expected = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
        got = min_snr_weights(sched.alphas_cumprod[t], gamma)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
        assert torch.all(got[snr <= gamma] == 1) and torch.all(got[snr > gamma] < 1)
    # the SD schedule: t = 999 keeps weight 1, t = 0 (SNR ~ 1175) gets about gamma / 1175
    w = min_snr_weights(sched.alphas_cumprod[torch.tensor([0, 999])], 5.0)
    assert w[1] == 1 and 0.003 < w[0] < 0.005


def test_min_snr_loss_weights_each_sample(model):
    b = _batch(model)
    plain = DiffusionObjective(model)(**b)
    out = DiffusionObjective(model, snr_gamma=5.0)(**b)
    # the plain MSE is still reported, unchanged
    torch.testing.assert_close(out["diffusion_loss"], plain["loss"])
    with torch.no_grad():  # per-sample MSE from single-sample calls (t = 5, 500, 999)
        per = torch.stack([DiffusionObjective(model)(**{k: v[i:i + 1] for k, v in b.items()})["loss"]
                           for i in range(3)])
    acp = make_ddpm_scheduler().alphas_cumprod[b["timesteps"]]
    snr = acp / (1 - acp)
    expected = (torch.clamp(snr, max=5.0) / snr * per).mean()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-7)
    assert out["loss"] < plain["loss"]  # t = 5 (SNR ~ 250) is down-weighted 50x
    with pytest.raises(Zero123Error, match="snr_gamma"):
        config_from_dict({"data": {"root": "x"}, "objective": {"snr_gamma": 0}})


def test_cfg_dropout_reaches_the_unet_as_zero_embedding_and_zero_concat(model):
    b = _batch(model)
    b["dropout_u"] = torch.tensor([0.02, 0.07, 0.12])  # clip only, both, concat only
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0].detach().clone()
        seen["ctx"] = kwargs["encoder_hidden_states"].detach().clone()

    h = model.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        DiffusionObjective(model)(**b)
    finally:
        h.remove()
    with torch.no_grad():
        clip = model.clip_embedding(b["cond"])
        proj = model.camera_projection
        zero_token = proj(torch.zeros_like(clip), b["camera"])  # projection of [zeros, T]: T still used
        full_token = proj(clip, b["camera"])
        concat = model.concat_latent(b["cond"])
    ctx, x = seen["ctx"], seen["x"]
    torch.testing.assert_close(ctx[0], zero_token[0])
    torch.testing.assert_close(ctx[1], zero_token[1])
    torch.testing.assert_close(ctx[2], full_token[2])
    assert not torch.allclose(zero_token[0], full_token[0])
    torch.testing.assert_close(x[0, 4:], concat[0])
    assert torch.all(x[1, 4:] == 0) and torch.all(x[2, 4:] == 0)


def test_which_parameters_learn(model):
    b = _batch(model)
    model.zero_grad(set_to_none=True)
    DiffusionObjective(model)(**b)["loss"].backward()
    assert model.unet.conv_in.weight.grad is not None
    assert model.camera_projection.projection.weight.grad is not None
    assert all(p.grad is None for p in model.vae.parameters())
    assert all(p.grad is None for p in model.image_encoder.parameters())
    # joint VAE training: the VAE gets exactly its reconstruction gradient, nothing from the diffusion loss
    model.zero_grad(set_to_none=True)
    out = DiffusionObjective(model, train_vae=True, kl_weight=1e-6)(**b)
    out["loss"].backward()
    joint = {n: p.grad.clone() for n, p in model.vae.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    alone, _ = vae_reconstruction_loss(model.vae, b["target"], b["posterior_noise"], 1e-6)
    alone.backward()
    assert joint and all(torch.allclose(joint[n], p.grad, atol=1e-7) for n, p in model.vae.named_parameters()
                         if p.grad is not None)
    torch.testing.assert_close(out["vae_loss"], alone)
    # a trainable image encoder gets the diffusion gradient
    model.zero_grad(set_to_none=True)
    DiffusionObjective(model, train_image_encoder=True)(**b)["loss"].backward()
    assert model.image_encoder.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_draw_noise_is_per_draw_and_batch_independent():
    a = draw_noise(torch.tensor([3, 7, 11]), seed=0, latent_shape=(4, 8, 8))
    b = draw_noise([7], seed=0, latent_shape=(4, 8, 8))
    c = draw_noise([7], seed=1, latent_shape=(4, 8, 8))
    for k in ("timesteps", "dropout_u", "noise", "posterior_noise"):
        assert torch.equal(a[k][1], b[k][0])
        assert not torch.equal(b[k], c[k]) or k == "timesteps"
    assert a["noise"].shape == (3, 4, 8, 8) and a["timesteps"].dtype == torch.long
    many = draw_noise(range(4000), seed=0, latent_shape=(1, 1, 1))
    t, u = many["timesteps"], many["dropout_u"]
    assert t.min() >= 0 and t.max() <= 999 and t.float().mean().item() == pytest.approx(499.5, abs=15)
    assert u.min() >= 0 and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.02)
    assert many["noise"].std().item() == pytest.approx(1.0, abs=0.05)


def test_warmup_factor_is_ldm_lambda_linear():
    assert warmup_factor(0, 100) == pytest.approx(1e-6)
    assert warmup_factor(50, 100) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert warmup_factor(99, 100) < 1.0
    assert warmup_factor(100, 100) == 1.0 and warmup_factor(10_000, 100) == 1.0
    assert warmup_factor(0, 0) == 1.0


def test_decay_factor_cosine_and_linear_after_the_warmup():
    assert decay_factor(50, 100, 1100, "constant") == 1.0
    for kind in ("cosine", "linear"):
        assert decay_factor(0, 100, 1100, kind) == 1.0 and decay_factor(100, 100, 1100, kind) == 1.0
        assert decay_factor(1100, 100, 1100, kind, 0.1) == pytest.approx(0.1)
        assert decay_factor(5000, 100, 1100, kind, 0.1) == pytest.approx(0.1)  # past max_steps: stays there
        assert decay_factor(600, 100, 1100, kind, 0.0) == pytest.approx(0.5)  # halfway, both kinds
    assert decay_factor(350, 100, 1100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert decay_factor(350, 100, 1100, "linear") == pytest.approx(0.75)
    with pytest.raises(Zero123Error, match="optim.decay"):
        decay_factor(1, 0, 10, "step")


def test_lr_multipliers_equal_diffusers_get_scheduler_where_the_schedules_agree():
    """warmup_factor x decay_factor is diffusers' get_scheduler with a warm-up from 0 and a decay to 0; ours also
    starts at 1e-6 (LDM's f_start) and may end at final_lr_factor, which diffusers' schedules cannot."""
    from diffusers.optimization import get_scheduler

    warm, total = 10, 50
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for kind, name in (("constant", "constant_with_warmup"), ("cosine", "cosine"), ("linear", "linear")):
        theirs = get_scheduler(name, opt, num_warmup_steps=warm, num_training_steps=total).lr_lambdas[0]
        for step in range(total + 1):
            ours = warmup_factor(step, warm, 0.0) * decay_factor(step, warm, total, kind, 0.0)
            assert ours == pytest.approx(theirs(step), rel=1e-12, abs=1e-15), (kind, step)
    assert warmup_factor(0, warm) == pytest.approx(1e-6) and theirs(0) == 0.0  # the default start differs
