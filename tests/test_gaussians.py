"""3D Gaussian representation: projection (EWA) against finite differences and a Monte-Carlo splat, densification
counts and optimiser consistency, state round trips with a changed count, mesh and albedo."""

import copy
import math

import numpy as np
import pytest
import torch

from zero123.camera import camera_to_world
from zero123.rendering.cameras import ray_bundle
from zero123.representations.gaussians.config import GaussianConfig
from zero123.representations.gaussians.densify import (accumulate_gradient_stats, crossed, densify_and_prune,
                                                        reset_opacity)
from zero123.representations.gaussians.mesh import density_at, extract_gaussian_mesh, gaussian_albedo
from zero123.representations.gaussians.model import GaussianModel, quaternion_to_matrix
from zero123.representations.gaussians.projection import project_gaussians

H, W = 48, 64


def _camera(elev=20.0, azim=30.0, radius=2.5):
    return camera_to_world(torch.tensor([elev]), torch.tensor([azim]), torch.tensor([radius])), torch.tensor([40.0])


def _pinhole(points, c2w, fovy, height, width):
    """Independent projection: invert c2w with numpy, OpenGL camera (looks down -z, +y up), rows down."""
    w2c = np.linalg.inv(c2w[0].double().numpy())
    p = points.double().numpy() @ w2c[:3, :3].T + w2c[:3, 3]
    f = 0.5 * height / math.tan(math.radians(float(fovy[0])) / 2)
    d = -p[:, 2]
    return np.stack([width / 2 + f * p[:, 0] / d, height / 2 - f * p[:, 1] / d], -1)


def _random_cov(gen, scale):
    q = torch.randn(1, 4, generator=gen)
    r = quaternion_to_matrix(q)[0]
    s = torch.diag(torch.tensor(scale))
    return r @ s @ s @ r.T


def test_quaternion_matrix_is_a_rotation():
    r = quaternion_to_matrix(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(8, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(8), atol=1e-5)


def test_means2d_follow_the_ray_bundle_convention():
    c2w, fovy = _camera()
    o, d = ray_bundle(c2w, fovy, H, W)
    rows, cols = torch.tensor([0, 5, 47, 20]), torch.tensor([0, 63, 10, 33])
    pts = o[0, rows, cols] + 2.1 * d[0, rows, cols]
    proj = project_gaussians(pts, torch.eye(3).expand(4, 3, 3) * 1e-4, c2w, fovy, H, W)
    expect = torch.stack([cols + 0.5, rows + 0.5], -1).float()
    assert torch.allclose(proj.means2d[0], expect, atol=1e-3)
    assert torch.allclose(proj.means2d[0].double(), torch.from_numpy(_pinhole(pts, c2w, fovy, H, W)), atol=1e-3)
    assert (proj.depths[0] > 0).all()


def test_cov2d_is_the_finite_difference_jacobian_sandwich():
    gen = torch.Generator().manual_seed(1)
    c2w, fovy = _camera()
    mean = torch.tensor([[0.1, -0.2, 0.15]])
    cov = _random_cov(gen, [0.05, 0.02, 0.01])
    proj = project_gaussians(mean, cov[None], c2w, fovy, H, W, low_pass=0.0)
    eps = 1e-4
    jac = np.zeros((2, 3))
    for k in range(3):
        e = torch.zeros(1, 3, dtype=torch.float64)
        e[0, k] = eps
        jac[:, k] = (_pinhole(mean.double() + e, c2w, fovy, H, W) - _pinhole(mean.double() - e, c2w, fovy, H, W))[0] \
            / (2 * eps)
    expect = jac @ cov.double().numpy() @ jac.T
    np.testing.assert_allclose(proj.cov2d[0, 0].double().numpy(), expect, rtol=2e-3, atol=1e-4)
    a, b, c = proj.conics[0, 0].tolist()
    np.testing.assert_allclose(np.array([[a, b], [b, c]]) @ expect, np.eye(2), atol=5e-3)


def test_monte_carlo_splat_matches_the_projected_gaussian():
    gen = torch.Generator().manual_seed(2)
    c2w, fovy = _camera(elev=-10.0, azim=140.0)
    mean = torch.tensor([[0.2, 0.1, -0.1]])
    cov = _random_cov(gen, [0.04, 0.015, 0.008])
    samples = torch.distributions.MultivariateNormal(mean[0].double(), cov.double()).sample((40000,))
    uv = _pinhole(samples, c2w, fovy, H, W)
    proj = project_gaussians(mean, cov[None], c2w, fovy, H, W, low_pass=0.3)
    np.testing.assert_allclose(uv.mean(0), proj.means2d[0, 0].numpy(), atol=0.05)
    np.testing.assert_allclose(np.cov(uv.T) + 0.3 * np.eye(2), proj.cov2d[0, 0].numpy(), rtol=0.04, atol=0.02)


def test_culling_behind_and_outside():
    c2w, fovy = _camera(elev=0.0, azim=0.0, radius=2.0)   # camera on +x looking at the origin
    pts = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 50.0, 0.0]])
    proj = project_gaussians(pts, torch.eye(3).expand(3, 3, 3) * 1e-3, c2w, fovy, H, W)
    assert proj.radii[0, 0] > 0 and proj.radii[0, 1] == 0 and proj.radii[0, 2] == 0


def test_projection_gradients_flow_to_means_and_covariances():
    c2w, fovy = _camera()
    mean = torch.tensor([[0.1, 0.0, 0.0]], requires_grad=True)
    cov = (torch.eye(3) * 0.01)[None].requires_grad_(True)
    proj = project_gaussians(mean, cov, c2w, fovy, H, W)
    (proj.means2d.sum() + proj.conics.sum()).backward()
    assert mean.grad.abs().sum() > 0 and cov.grad.abs().sum() > 0


# ----- model, densification ------------------------------------------------------------------------------------
def _model(n=6, seed=0):
    m = GaussianModel(GaussianConfig(num_points=n))
    return m.init_in_sphere(torch.Generator().manual_seed(seed))


def test_init_in_sphere():
    m = _model(2000)
    r = m.means.norm(dim=-1)
    assert float(r.detach().max()) <= 0.5 + 1e-6
    assert abs(float((r < 0.5 * 0.5 ** (1 / 3)).float().mean()) - 0.5) < 0.05   # uniform in the volume
    assert torch.allclose(m.opacities, torch.full((2000,), 0.1), atol=1e-6)
    assert torch.allclose(m.colors, torch.full((2000, 3), 0.5), atol=2e-3)
    assert (m.log_scales[:, 0] == m.log_scales[:, 1]).all()


def _stepped(model):
    opt = torch.optim.Adam([{"params": [getattr(model, n)], "lr": 0.01} for n in
                            ("means", "log_scales", "quats", "opacity_logits", "sh0")], eps=1e-15)
    loss = (model.means ** 2).sum() + model.scales.sum() + model.opacities.sum() + model.colors.sum() \
        + model.quats.sum()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def test_densify_counts_and_optimizer_consistency():
    cfg = GaussianConfig(num_points=6, densify_grad_threshold=0.5, percent_dense=0.1, extent=0.5)
    m = GaussianModel(cfg).init_in_sphere(torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.log_scales.copy_(torch.log(torch.tensor([0.01, 0.01, 0.02, 0.03, 0.01, 0.01]))[:, None].expand(6, 3))
        m.opacity_logits[5] = -10.0                      # opacity < 0.01: pruned
        m.grad_accum.copy_(torch.tensor([1.0, 0.1, 1.0, 1.2, 0.0, 0.0]))
        m.grad_count.copy_(torch.tensor([1.0, 1.0, 1.0, 2.0, 0.0, 0.0]))   # means 1.0, 0.1, 1.0, 0.6, nan, nan
    opt = _stepped(m)
    params = [m.means, m.log_scales, m.quats, m.opacity_logits, m.sh0]
    before = {id(p): (p.detach().clone(), opt.state[p]["exp_avg"].clone()) for p in params}
    stats = densify_and_prune(m, opt, cfg, torch.Generator().manual_seed(3))
    # hot (mean grad >= 0.5): 0, 2, 3, all with scales <= percent_dense * extent = 0.05: cloned; 5 pruned
    assert stats == {"cloned": 3, "split": 0, "pruned": 1, "total": 8}
    new_params = [m.means, m.log_scales, m.quats, m.opacity_logits, m.sh0]
    assert [g["params"][0] is p for g, p in zip(opt.param_groups, new_params)] == [True] * 5
    assert len(opt.state) == 5 and set(map(id, opt.state)) == set(map(id, new_params))
    for old, p in zip(params, new_params):
        old_p, old_m = before[id(old)]
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape == st["exp_avg_sq"].shape
        assert torch.equal(p.detach()[:5], old_p[:5]) and torch.equal(st["exp_avg"][:5], old_m[:5])
        assert torch.equal(p.detach()[5:], old_p[[0, 2, 3]])           # the clones, after the pruned one left
        assert (st["exp_avg"][5:] == 0).all()
    assert (m.grad_accum == 0).all() and len(m.grad_count) == 8
    (m.means.sum() + m.opacities.sum()).backward()
    opt.step()                                                         # shapes agree: no error


def test_split_children():
    cfg = GaussianConfig(num_points=3, densify_grad_threshold=0.5, percent_dense=0.01, extent=0.5)
    m = GaussianModel(cfg).init_in_sphere(torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.log_scales.copy_(torch.log(torch.tensor([[0.02, 0.01, 0.01], [0.001] * 3, [0.001] * 3])))
        m.grad_accum.copy_(torch.tensor([2.0, 0.0, 0.0]))
        m.grad_count.fill_(1.0)
    parent_mean, parent_scale = m.means[0].clone(), m.scales[0].clone()
    stats = densify_and_prune(m, None, cfg, torch.Generator().manual_seed(0))
    assert stats == {"cloned": 0, "split": 1, "pruned": 0, "total": 4}
    kids = slice(2, 4)
    assert torch.allclose(m.scales[kids], (parent_scale / 1.6).expand(2, 3), rtol=1e-5)
    assert ((m.means[kids] - parent_mean).norm(dim=-1) < 0.1).all()
    assert not torch.equal(m.means[2], m.means[3])


def test_gradient_stats_in_ndc_units_and_visible_only():
    m = _model(3)
    means2d = torch.zeros(2, 3, 2, requires_grad=True)
    means2d.grad = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])
    radii = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    accumulate_gradient_stats(m, [(means2d, radii, 10, 20)])
    assert torch.allclose(m.grad_accum, torch.tensor([10.0, 5.0 + 20.0, 0.0]))
    assert torch.equal(m.grad_count, torch.tensor([2.0, 2.0, 0.0]))


def test_reset_opacity_and_crossed():
    m = _model(4)
    with torch.no_grad():
        m.opacity_logits.copy_(torch.tensor([-6.0, 0.0, 2.0, -1.0]))
    opt = _stepped(m)
    reset_opacity(m, opt)
    assert float(m.opacities.max()) <= 0.01 + 1e-6 and float(m.opacities[0]) < 0.01
    assert (opt.state[m.opacity_logits]["exp_avg"] == 0).all()
    assert crossed(100, 99, 100) and crossed(100, 50, 250) and not crossed(100, 100, 199)


def test_state_round_trip_with_another_count():
    a = _model(10, seed=1)
    opt_a = _stepped(a)
    with torch.no_grad():
        a.grad_accum.fill_(1.0)
        a.grad_count.fill_(1.0)
    densify_and_prune(a, opt_a, GaussianConfig(densify_grad_threshold=0.1, percent_dense=1.0, extent=10.0), None)
    assert len(a) == 20
    b = GaussianModel(GaussianConfig(num_points=3))
    holder = torch.nn.ModuleDict({"g": b})                 # loads through a parent module too
    opt_b = torch.optim.Adam([{"params": [getattr(b, n)], "lr": 0.01} for n in
                              ("means", "log_scales", "quats", "opacity_logits", "sh0")], eps=1e-15)
    holder.load_state_dict({f"g.{k}": v for k, v in a.state_dict().items()})
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))   # as from a file: no shared tensors
    assert len(b) == 20
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    for model, opt in ((a, opt_a), (b, opt_b)):
        (model.means.square().sum() + model.colors.sum()).backward()
        opt.step()
    assert torch.equal(a.means, b.means) and torch.equal(a.sh0, b.sh0)


# ----- mesh, albedo ----------------------------------------------------------------------------------------------
def _two_blobs():
    m = GaussianModel(GaussianConfig(num_points=2))
    with torch.no_grad():
        m.means.copy_(torch.tensor([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0]]))
        m.log_scales.fill_(math.log(0.1))
        m.opacity_logits.fill_(float(torch.logit(torch.tensor(0.9))))
        m.sh0.copy_(torch.tensor([[1.5, -1.5, -1.5], [-1.5, -1.5, 1.5]]))   # red-ish, blue-ish
    return m


def test_mesh_of_gaussians_is_the_iso_surface():
    m = _two_blobs()
    mesh = extract_gaussian_mesh(m, 32, 0.5, block=16)
    r_iso = 0.1 * math.sqrt(2 * math.log(0.9 / 0.5))       # 0.9 exp(-r^2 / (2 s^2)) = 0.5
    for c in (-0.3, 0.3):
        v = mesh.vertices[np.sign(mesh.vertices[:, 0]) == np.sign(c)]
        np.testing.assert_allclose(np.linalg.norm(v - [c, 0, 0], axis=1), r_iso, atol=0.012)
    assert mesh.is_watertight and mesh.volume > 0
    d = density_at(m, torch.tensor(mesh.vertices, dtype=torch.float32))
    np.testing.assert_allclose(d.numpy(), 0.5, atol=0.08)
    with pytest.raises(Exception, match="iso-level"):
        extract_gaussian_mesh(m, 16, 5.0)


def test_albedo_from_nearby_gaussians():
    m = _two_blobs()
    pts = torch.tensor([[-0.35, 0.05, 0.0], [0.32, 0.0, -0.05], [3.0, 0.0, 0.0]])
    alb = gaussian_albedo(m, pts)
    assert torch.allclose(alb[0], m.colors[0], atol=1e-3) and torch.allclose(alb[1], m.colors[1], atol=1e-3)
    assert torch.allclose(alb[2], m.colors[1], atol=1e-3)   # far away: the nearest centre's colour


# ----- the representation ------------------------------------------------------------------------------------------
def _flat_gaussian_rep():
    from zero123.representations.gaussians.representation import GaussianRepresentation

    rep = GaussianRepresentation(GaussianConfig(num_points=1, backend="torch"))
    with torch.no_grad():
        g = rep.gaussians
        g.means.zero_()
        g.log_scales.copy_(torch.log(torch.tensor([[0.2, 0.2, 0.01]])))   # flat, normal along world z
        g.opacity_logits.fill_(float(torch.logit(torch.tensor(0.8))))
        g.sh0.copy_(torch.tensor([[1.0, -1.0, 0.0]]))
    return rep


def test_render_channels_of_one_gaussian():
    from zero123.rendering.cameras import orbit_cameras

    rep = _flat_gaussian_rep()
    cams = orbit_cameras([90.0, 60.0], [0.0, 30.0], 2.0, 40.0)          # straight down, and oblique
    bg = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    out = rep.render(cams, 33, background=bg, with_normals=True)
    c = 16                                                                # the centre pixel: the Gaussian's centre
    assert torch.allclose(out.opacity[0, c, c, 0], torch.tensor(0.8), atol=1e-3)
    assert torch.allclose(out.depth[:, c, c, 0] / out.opacity[:, c, c, 0], torch.tensor([2.0, 2.0]), atol=1e-3)
    expect_rgb = 0.8 * rep.gaussians.colors[0] + 0.2 * bg[0]
    assert torch.allclose(out.rgb[0, c, c], expect_rgb, atol=1e-3)
    n = out.comp_normal[0, c, c] / out.opacity[0, c, c]                   # (n + 1) / 2 with n = +z (toward the camera)
    assert torch.allclose(n, torch.tensor([0.5, 0.5, 1.0]), atol=1e-3)
    assert torch.allclose(out.rgb[0, 0, 0], bg[0], atol=1e-3) and float(out.opacity[0, 0, 0]) < 1e-3
    chunked = rep.render_chunked(cams, 33, background=bg, with_normals=True, max_images=1)
    assert torch.allclose(chunked.rgb, out.rgb.detach(), atol=1e-6)
    assert rep.regularisers(out, with_sparsity=True) == {}
    lit = rep.render(cams, 33, background=bg, shading="textureless", ambient_ratio=1.0)
    assert torch.allclose(lit.rgb[0, c, c], 0.8 * torch.ones(3) + 0.2 * bg[0], atol=1e-3)


def test_hooks_follow_the_schedule():
    from zero123.rendering.cameras import orbit_cameras
    from zero123.representations.gaussians.representation import GaussianRepresentation, position_lr

    cfg = GaussianConfig(num_points=40, densify_grad_threshold=0.0, percent_dense=10.0, extent=100.0,
                         densify_start=100, densify_interval=100, backend="torch")
    rep = GaussianRepresentation(cfg)
    rep.gaussians.init_in_sphere(torch.Generator().manual_seed(0))
    opt = rep.make_optimizer()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01) and position_lr(cfg, 500) == pytest.approx(0.0002)
    counts = []
    for step, sched in enumerate([0, 98, 99, 150, 199]):                  # iterations 1, 99, 100, 151, 200
        rep.before_step(step, sched, torch.Generator().manual_seed(step))
        out = rep.render(orbit_cameras(20.0, 0.0, 2.0, 49.1), 16, background=torch.ones(1, 3))
        out.rgb.mean().backward()
        rep.after_backward(step, sched, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rep.after_step(step, sched, opt)
        counts.append(len(rep.gaussians))
    assert counts == [40, 40, 80, 80, 160]                               # cloned at iterations 100 and 200
    assert opt.param_groups[0]["lr"] == pytest.approx(position_lr(cfg, 200))
    assert int(rep.last_iteration) == 200
