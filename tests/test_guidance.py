"""SDS guidance, schedules and losses: values against the recipe and independent re-computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from zero123.camera import camera_embedding
from zero123.errors import Zero123Error
from zero123.fields import FieldConfig, NeRFField, OccupancyGrid
from zero123.guidance import (LossWeights, SDSConfig, SDSGuidance, mask_loss, normal_smooth_2d,
                              opaque_loss, reference_rgb_loss, scale_schedule, scheduled_value,
                              sparsity_loss)
from zero123.rendering.cameras import orbit_cameras, sample_cameras
from zero123.rendering.volume import RenderSettings, render
from zero123.representations.nerf import normal_smooth_3d, orient_loss


def test_schedules_follow_threestudio():
    w = LossWeights()
    assert scheduled_value(w.rgb, 0) == 500 and scheduled_value(w.rgb, 100) == 500
    assert scheduled_value(w.rgb, 250) == pytest.approx(750) and scheduled_value(w.rgb, 600) == 1000
    ns = w.normal_smooth
    assert [scheduled_value(ns, s) for s in (0, 100, 125, 150, 175, 200, 599)] == \
        pytest.approx([7, 7, 6, 5, 7.5, 10, 10])
    assert scheduled_value([0.5, 1.0, 10], 5) == pytest.approx(0.75)      # 3-element form starts at 0
    assert scale_schedule(ns, 0.5) == [50, 7.0, 5.0, 75, 10.0, 100]
    assert scheduled_value(scale_schedule(ns, 0.5), 62.5) == pytest.approx(6)
    with pytest.raises(Zero123Error):
        scheduled_value([1, 2], 0)
    at = w.at(0)
    assert at["sds"] == 0.1 and at["mask"] == 50 and at["orient"] == 1 and at["sparsity"] == 0.5


def test_timestep_bounds_follow_the_recipe(tiny_model):
    g = SDSGuidance(tiny_model, torch.zeros(1, 3, 32, 32))
    assert g.timestep_bounds(0) == (700, 980)
    assert g.timestep_bounds(50) == (700, 980)
    assert g.timestep_bounds(125) == (int(1000 * 0.5), int(1000 * 0.89))
    assert g.timestep_bounds(200) == (300, 800) and g.timestep_bounds(10_000) == (300, 800)


@pytest.mark.parametrize("variant", ["zero123", "stable_zero123"])
def test_camera_embedding_of_renders_matches_zero123_camera(variant):
    from zero123.models.configs import tiny_config

    model = tiny_config(variant).build(seed=0).eval()
    g = SDSGuidance(model, torch.zeros(1, 3, 32, 32), SDSConfig(), input_elevation=5.0, input_azimuth=0.0,
                    input_distance=3.8)
    cams = sample_cameras(6, torch.Generator().manual_seed(3))
    emb = g.camera_embedding(cams.elevation, cams.azimuth, cams.radius)
    ref = camera_embedding(variant, cams.elevation, cams.azimuth, cams.radius, 5.0, 0.0, 3.8)
    torch.testing.assert_close(emb, ref)
    # explicit values: T = [d_polar (rad), sin d_az, cos d_az, 4th]
    e, a = float(cams.elevation[0]), float(cams.azimuth[0])
    fourth = 0.0 if variant == "zero123" else math.radians(90 - 5.0)
    expected = torch.tensor([math.radians(5.0 - e), math.sin(math.radians(a)), math.cos(math.radians(a)), fourth])
    torch.testing.assert_close(emb[0], expected, atol=1e-5, rtol=0)


def _replay_sds(model, image, rgb, elev, azim, rad, step, seed, cfg, input_camera):
    """Independent re-computation of the SDS loss from the spec, drawing the same random numbers."""
    gen = torch.Generator().manual_seed(seed)
    x = F.interpolate(rgb.permute(0, 3, 1, 2), (32, 32), mode="bilinear", align_corners=False) * 2 - 1
    lat = model.vae.encode(x).latent_dist.sample(generator=gen) * 0.18215
    lo = int(1000 * scheduled_value(cfg.min_step_percent, step))
    hi = int(1000 * scheduled_value(cfg.max_step_percent, step))
    t = torch.randint(lo, hi + 1, (rgb.shape[0],), generator=gen)
    # threestudio's torch.randn_like(latents) on channels_last latents: the stream fills [B,h,w,4] memory order
    noise = torch.empty(lat.shape, memory_format=torch.channels_last).normal_(generator=gen)
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
    T = camera_embedding(model.variant, elev, azim, rad, *input_camera)
    clip = model.clip_embedding(image)
    concat = model.vae.encode(image).latent_dist.mode()
    token = model.camera_projection(clip.expand(len(T), -1, -1), T[:, None, :])
    n = len(T)
    x_in = torch.cat([torch.cat([noisy, torch.zeros_like(concat).expand(n, -1, -1, -1)], 1),
                      torch.cat([noisy, concat.expand(n, -1, -1, -1)], 1)])
    eps = model.unet(x_in, torch.cat([t, t]), encoder_hidden_states=torch.cat([torch.zeros_like(token), token])).sample
    eu, ec = eps.chunk(2)
    grad = (1 - a) * (eu + cfg.guidance_scale * (ec - eu) - noise)
    return 0.5 * ((lat - (lat - grad)) ** 2).sum() / rgb.shape[0], t


def test_sds_loss_matches_an_independent_recomputation(tiny_model):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    cfg = SDSConfig()
    g = SDSGuidance(tiny_model, image, cfg, input_elevation=5.0)
    rgb = torch.rand(3, 16, 16, 3)
    elev, azim, rad = torch.tensor([10.0, 40.0, -5.0]), torch.tensor([30.0, -120.0, 170.0]), torch.full((3,), 3.8)
    with torch.no_grad():
        out = g(rgb, orbit_cameras(elev, azim, rad, 20.0), 120, generator=torch.Generator().manual_seed(11))
        ref, t_ref = _replay_sds(tiny_model, image, rgb, elev, azim, rad, 120, 11, cfg, (5.0, 0.0, 3.8))
    assert torch.equal(out.timesteps, t_ref)
    torch.testing.assert_close(out.loss, ref, rtol=1e-4, atol=1e-6)
    # the loss is 0.5 * |grad|^2 / B by construction
    torch.testing.assert_close(out.loss, 0.5 * out.grad_norm ** 2 / 3, rtol=1e-4, atol=1e-6)
    lo, hi = g.timestep_bounds(120)
    assert ((out.timesteps >= lo) & (out.timesteps <= hi)).all()


def test_sds_gradient_flows_into_the_field(tiny_model):
    torch.manual_seed(0)
    f = NeRFField(FieldConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0,
                              mlp_width=16))
    occ = OccupancyGrid(2.0, 16)
    s = RenderSettings(num_samples_per_ray=64)
    occ.update(f.density, s.step_size(2.0))
    gen = torch.Generator().manual_seed(0)
    cams = sample_cameras(2, gen)
    out = render(f, cams, 16, occupancy=occ, settings=s, generator=gen)
    guidance = SDSGuidance(tiny_model.requires_grad_(False), torch.zeros(1, 3, 32, 32))
    sds = guidance(out.rgb, cams, 0, generator=gen)
    assert sds.loss.ndim == 0 and torch.isfinite(sds.loss)
    sds.loss.backward()
    grads = [p.grad for p in f.parameters()]
    assert all(gr is not None for gr in grads)
    assert f.encoding.table.grad.shape == f.encoding.table.shape
    assert all(torch.isfinite(gr).all() for gr in grads)
    assert f.encoding.table.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_model.parameters())
    tiny_model.requires_grad_(True)


def test_input_conditioning_is_computed_once(tiny_model, monkeypatch):
    calls = {"clip": 0, "concat": 0}
    orig_clip, orig_concat = tiny_model.clip_embedding, tiny_model.concat_latent

    def clip(x):
        calls["clip"] += 1
        return orig_clip(x)

    def concat(x):
        calls["concat"] += 1
        return orig_concat(x)

    monkeypatch.setattr(tiny_model, "clip_embedding", clip)
    monkeypatch.setattr(tiny_model, "concat_latent", concat)
    g = SDSGuidance(tiny_model, torch.zeros(1, 3, 64, 64))   # resized to the model's 32 px
    with torch.no_grad():
        for _ in range(3):
            g(torch.rand(2, 8, 8, 3), orbit_cameras([0.0, 10.0], [0.0, 90.0], [3.8, 3.8], 20.0), 0,
              generator=torch.Generator().manual_seed(0))
    assert calls == {"clip": 1, "concat": 1}
    assert g.clip_embedding.shape == (1, 1, 768) and g.concat_latent.shape == (1, 4, 8, 8)


def test_sds_rejects_bad_shapes(tiny_model):
    with pytest.raises(Zero123Error):
        SDSGuidance(tiny_model, torch.zeros(3, 32, 32))
    g = SDSGuidance(tiny_model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(Zero123Error):
        g(torch.rand(2, 3, 8, 8), orbit_cameras([0, 0], [0, 0], [3.8, 3.8], 20.0), 0)


def test_loss_values():
    op = torch.full((1, 4, 4, 1), 0.5)
    assert float(opaque_loss(op)) == pytest.approx(math.log(2), rel=1e-5)
    assert float(opaque_loss(torch.ones(1, 2, 2, 1))) < 0.01
    assert float(sparsity_loss(torch.zeros(1, 2, 2, 1))) == pytest.approx(0.1)
    assert float(sparsity_loss(torch.ones(1, 2, 2, 1))) == pytest.approx(math.sqrt(1.01))
    assert float(mask_loss(op, torch.ones(1, 4, 4, 1, dtype=torch.bool))) == pytest.approx(0.25)
    # reference RGB: outside the mask the target is the background
    gt = torch.zeros(1, 2, 2, 3)
    mask = torch.tensor([[[[True], [False]], [[False], [False]]]])
    pred = torch.ones(1, 2, 2, 3)
    assert float(reference_rgb_loss(pred, gt, mask, torch.ones(3))) == pytest.approx(0.25)
    # orientation: only normals facing along the ray (away from the camera) count
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    w = torch.tensor([0.5, 1.0])
    assert float(orient_loss(w, n, d, torch.tensor([1.0, 0.0]))) == pytest.approx(0.5)
    # smoothness: zero for constant maps, positive otherwise
    assert float(normal_smooth_2d(torch.ones(1, 4, 4, 3))) == 0
    ramp = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 4, 3)
    assert float(normal_smooth_2d(ramp)) == pytest.approx(1.0)
    assert float(normal_smooth_3d(n, -n)) == pytest.approx(2 / 3)
