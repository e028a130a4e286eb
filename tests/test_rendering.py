"""Cameras and volume rendering: closed-form values, consistency with zero123.camera, gradients."""

import math

import pytest
import torch
from torch import nn

from zero123.camera import camera_to_world, spherical_from_position
from zero123.fields import FieldConfig, FieldOutput, NeRFField, OccupancyGrid
from zero123.rendering.cameras import orbit_cameras, ray_bundle, sample_cameras, turntable_cameras
from zero123.rendering.volume import (RenderSettings, exclusive_sum_per_ray, ray_aabb, render, render_rays,
                                      sample_along_rays)


class BallField(nn.Module):
    """Constant density ``sigma`` inside a ball of radius ``r``, albedo (0.2, 0.4, 0.6), radial normals."""

    def __init__(self, sigma=5.0, r=0.5, radius=2.0):
        super().__init__()
        self.sigma, self.r, self.radius = sigma, r, radius
        self.dummy = nn.Parameter(torch.zeros(()))

    def density(self, x):
        return torch.where(x.norm(dim=-1) < self.r, self.sigma, 0.0) + 0 * self.dummy

    def normal(self, x):
        return torch.nn.functional.normalize(x, dim=-1)

    def forward(self, x, with_albedo=True, with_normal=False):
        d = self.density(x)
        alb = torch.tensor([0.2, 0.4, 0.6]).expand(x.shape[0], 3) if with_albedo else None
        return FieldOutput(density=d, raw_density=d, albedo=alb, normal=self.normal(x) if with_normal else None)


def test_ray_bundle_geometry():
    c2w = camera_to_world(torch.tensor([30.0]), torch.tensor([45.0]), torch.tensor([3.8]))
    o, d = ray_bundle(c2w, 20.0, 64, 64)
    assert o.shape == d.shape == (1, 64, 64, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(1, 64, 64))
    # the four central pixels straddle the optical axis, which points at the origin
    centre = torch.nn.functional.normalize(d[0, 31:33, 31:33].mean((0, 1)), dim=0)
    torch.testing.assert_close(centre, -o[0, 0, 0] / o[0, 0, 0].norm(), atol=1e-4, rtol=0)
    # the top edge (row 0 centre at 0.5 px) is at ~fovy/2 above the axis and up in the world (z up camera)
    top = d[0, 0].mean(0)
    angle = math.degrees(math.acos(float(torch.nn.functional.normalize(top, dim=0) @ centre)))
    expected = math.degrees(math.atan((32 - 0.5) / 32 * math.tan(math.radians(10))))
    assert abs(angle - expected) < 0.05
    assert top[2] > centre[2]


def test_sampled_cameras_follow_the_recipe_and_zero123_camera():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        cams = sample_cameras(12, g)
        assert ((cams.elevation >= -10) & (cams.elevation <= 80)).all()
        assert ((cams.azimuth >= -180) & (cams.azimuth <= 180)).all()
        torch.testing.assert_close(cams.radius, torch.full((12,), 3.8))
        torch.testing.assert_close(cams.fovy, torch.full((12,), 20.0))
        torch.testing.assert_close(cams.c2w, camera_to_world(cams.elevation, cams.azimuth, cams.radius))
        e, a, r = spherical_from_position(cams.c2w[:, :3, 3])
        torch.testing.assert_close(e, cams.elevation, atol=1e-3, rtol=0)
        torch.testing.assert_close(a, cams.azimuth, atol=1e-3, rtol=0)
        ld = cams.light_positions.norm(dim=-1)
        assert ((ld >= 7.5 - 1e-4) & (ld <= 10 + 1e-4)).all()
    # the same generator state gives the same cameras
    a1 = sample_cameras(4, torch.Generator().manual_seed(7))
    a2 = sample_cameras(4, torch.Generator().manual_seed(7))
    assert torch.equal(a1.c2w, a2.c2w) and torch.equal(a1.light_positions, a2.light_positions)
    tt = turntable_cameras(8, 5.0, 3.8, 20.0)
    torch.testing.assert_close(tt.azimuth, torch.tensor([0.0, 45, 90, 135, -180, -135, -90, -45]))


def test_exclusive_sum_per_ray_matches_a_loop():
    torch.manual_seed(0)
    counts = [3, 0, 5, 1, 0, 4]
    ray = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    v = torch.rand(ray.numel())
    out = exclusive_sum_per_ray(v, ray, len(counts))
    ref, i = [], 0
    for c in counts:
        acc = 0.0
        for _ in range(c):
            ref.append(acc)
            acc += float(v[i])
            i += 1
    torch.testing.assert_close(out, torch.tensor(ref), atol=1e-6, rtol=0)


def test_ray_aabb():
    o = torch.tensor([[0.0, 0.0, 5.0], [3.0, 3.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far = ray_aabb(o, d, torch.full((3,), -1.0), torch.full((3,), 1.0))
    torch.testing.assert_close(near[0], torch.tensor(4.0))
    torch.testing.assert_close(far[0], torch.tensor(6.0))
    assert far[1] <= near[1]


def test_constant_density_ball_has_closed_form_opacity_depth_and_colour():
    sigma, r = 3.0, 0.5
    field = BallField(sigma, r)
    cams = orbit_cameras(0.0, 0.0, 3.8, 20.0)
    settings = RenderSettings(num_samples_per_ray=2048, alpha_threshold=0.0, early_stop_eps=0.0)
    out = render(field, cams, 31, settings=settings, stratified=False, background=[0.0, 0.0, 0.0])
    # centre pixel ray passes through the centre: chord 2r
    op = out.opacity[0, 15, 15, 0].detach()
    assert abs(float(op) - (1 - math.exp(-sigma * 2 * r))) < 5e-3
    # colour = opacity * albedo on black
    torch.testing.assert_close(out.rgb[0, 15, 15], op * torch.tensor([0.2, 0.4, 0.6]), atol=1e-4, rtol=0)
    # depth = integral of t * sigma * T(t) over the chord, with t from the camera
    t0, t1 = 3.8 - r, 3.8 + r
    ts = torch.linspace(t0, t1, 20001)
    w = sigma * torch.exp(-sigma * (ts - t0))
    expected_depth = float(torch.trapezoid(ts * w, ts))
    assert abs(float(out.depth[0, 15, 15, 0].detach()) - expected_depth) < 5e-3
    # corners miss the ball: empty, background colour
    assert float(out.opacity[0, 0, 0, 0].detach()) == 0.0
    # white background by default
    out_w = render(field, cams, 31, settings=settings, stratified=False)
    torch.testing.assert_close(out_w.rgb[0, 0, 0], torch.ones(3))


def test_pruning_drops_only_invisible_samples_and_segments_do_not_matter():
    field = BallField(sigma=200.0, r=0.5)
    cams = orbit_cameras([0.0, 40.0], [0.0, 100.0], 3.8, 20.0)
    o, d = ray_bundle(cams.c2w, cams.fovy, 24)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    full = RenderSettings(num_samples_per_ray=256, alpha_threshold=0.0, early_stop_eps=0.0)
    pruned = RenderSettings(num_samples_per_ray=256, segment=4)
    pruned_big = RenderSettings(num_samples_per_ray=256, segment=1000)
    a = sample_along_rays(field, o, d, settings=full, stratified=False)
    b = sample_along_rays(field, o, d, settings=pruned, stratified=False)
    c = sample_along_rays(field, o, d, settings=pruned_big, stratified=False)
    assert b[0].numel() < a[0].numel() / 5           # opaque ball: most samples are behind the surface
    assert torch.equal(b[0], c[0]) and torch.equal(b[1], c[1])
    bg = torch.ones(o.shape[0], 3)
    ra = render_rays(field, o, d, bg, settings=full, stratified=False)
    rb = render_rays(field, o, d, bg, settings=pruned, stratified=False)
    torch.testing.assert_close(ra["rgb"], rb["rgb"], atol=2e-3, rtol=0)
    torch.testing.assert_close(ra["opacity"], rb["opacity"], atol=2e-3, rtol=0)


def test_render_nerf_field_gradients_and_normals():
    torch.manual_seed(0)
    f = NeRFField(FieldConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0,
                              mlp_width=16))
    occ = OccupancyGrid(2.0, 16)
    s = RenderSettings(num_samples_per_ray=128)
    occ.update(f.density, s.step_size(2.0))
    g = torch.Generator().manual_seed(0)
    cams = sample_cameras(2, g)
    out = render(f, cams, 12, occupancy=occ, with_normals=True, normal_perturb_std=0.01, settings=s, generator=g,
                 shading="diffuse", ambient_ratio=0.5)
    assert out.rgb.shape == (2, 12, 12, 3) and out.comp_normal.shape == (2, 12, 12, 3)
    assert out.normal.shape == out.normal_perturb.shape == (out.weights.numel(), 3)
    # the blob is opaque at the centre: the central pixels are (nearly) fully covered
    assert float(out.opacity[:, 5:7, 5:7].detach().min()) > 0.9
    # comp_normal is in [0, 1] and the central normal faces the camera
    cn = out.comp_normal.detach()
    assert float(cn.min()) >= 0 and float(cn.max()) <= 1
    n_c = cn[0, 6, 6] * 2 - 1
    cam_dir = torch.nn.functional.normalize(cams.c2w[0, :3, 3], dim=0)
    assert float(n_c @ cam_dir) > 0.8
    loss = out.rgb.mean() + out.comp_normal.mean() + (out.normal - out.normal_perturb).abs().mean()
    loss.backward()
    assert torch.isfinite(f.encoding.table.grad).all() and f.encoding.table.grad.abs().sum() > 0


def test_render_rejects_unknown_shading():
    from zero123.errors import Zero123Error

    with pytest.raises(Zero123Error):
        render(BallField(), orbit_cameras(0.0, 0.0, 3.8, 20.0), 4, shading="phong")
