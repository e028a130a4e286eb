"""The camera-conventions module against independent formulas (zero123's get_T, threestudio's get_cond)."""

import math

import numpy as np
import pytest
import torch

from zero123 import camera
from zero123.errors import Zero123Error


def zero123_get_T(target_rt, cond_rt):
    """Independent re-statement of zero123's ObjaverseData.get_T (numpy, world-to-camera 3x4 inputs)."""
    def cart2sph(xyz):
        xy = xyz[0] ** 2 + xyz[1] ** 2
        return np.arctan2(np.sqrt(xy), xyz[2]), np.arctan2(xyz[1], xyz[0]), np.sqrt(xy + xyz[2] ** 2)

    def pos(rt):
        return -rt[:3, :3].T @ rt[:, -1]

    tt, at, zt = cart2sph(pos(target_rt))
    tc, ac, zc = cart2sph(pos(cond_rt))
    d_az = (at - ac) % (2 * math.pi)
    return np.array([tt - tc, math.sin(d_az), math.cos(d_az), zt - zc])


def test_embedding_from_rt_matches_zero123_get_T():
    rng = np.random.default_rng(0)
    for _ in range(20):
        e1, e2 = rng.uniform(-80, 80, 2)
        a1, a2 = rng.uniform(-180, 180, 2)
        r1, r2 = rng.uniform(1.5, 2.2, 2)
        rt1 = camera.world_to_camera_rt(camera.camera_to_world(e1, a1, r1)).double().numpy()
        rt2 = camera.world_to_camera_rt(camera.camera_to_world(e2, a2, r2)).double().numpy()
        ours = camera.embedding_from_rt("zero123", torch.from_numpy(rt2), torch.from_numpy(rt1))
        np.testing.assert_allclose(ours.numpy(), zero123_get_T(rt2, rt1), atol=2e-5)


def test_stable_zero123_embedding_matches_threestudio_formula():
    elev, azim, cond_elev, cond_azim = 30.0, 75.0, 5.0, 0.0
    t = camera.camera_embedding("stable_zero123", elev, azim, 3.8, cond_elev, cond_azim, 3.8)
    expected = [math.radians((90 - elev) - (90 - cond_elev)), math.sin(math.radians(azim - cond_azim)),
                math.cos(math.radians(azim - cond_azim)), math.radians(90 - cond_elev)]
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)


def test_relative_embedding_sign_convention():
    t = camera.relative_camera_embedding("zero123", 30.0, 90.0, 0.5)
    # looking from higher up = smaller polar angle = negative d_polar
    np.testing.assert_allclose(t.numpy(), [-math.radians(30), 1.0, 0.0, 0.5], atol=1e-6)


def test_spherical_round_trip_and_axes():
    c2w = camera.camera_to_world([10.0, -40.0, 89.0], [0.0, 135.0, -60.0], [2.0, 1.5, 3.8])
    e, a, r = camera.spherical_from_position(c2w[:, :3, 3])
    np.testing.assert_allclose(e.numpy(), [10, -40, 89], atol=1e-4)
    np.testing.assert_allclose(a.numpy(), [0, 135, -60], atol=1e-4)
    np.testing.assert_allclose(r.numpy(), [2, 1.5, 3.8], atol=1e-5)
    rot = c2w[:, :3, :3]
    np.testing.assert_allclose((rot.transpose(1, 2) @ rot).numpy(), np.eye(3)[None].repeat(3, 0), atol=1e-5)
    forward = -c2w[:, :3, 2]  # the camera looks down its -z axis, at the origin
    np.testing.assert_allclose(forward.numpy(), (-c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True)).numpy(),
                               atol=1e-5)
    assert (c2w[:2, 2, 1] > 0).all()  # image up has a world +z component for cameras below the pole


def test_rt_file_round_trip(tmp_path):
    c2w = camera.camera_to_world(20.0, 33.0, 1.8)
    camera.save_zero123_rt(tmp_path / "000.npy", c2w)
    assert np.load(tmp_path / "000.npy").shape == (3, 4)
    np.testing.assert_allclose(camera.load_zero123_rt(tmp_path / "000.npy").numpy(), c2w.numpy(), atol=1e-5)


def test_top_view_is_well_defined():
    c2w = camera.camera_to_world(90.0, 0.0, 2.0)
    assert torch.isfinite(c2w).all()
    np.testing.assert_allclose(c2w[:3, 3].numpy(), [0, 0, 2], atol=1e-5)


@pytest.mark.parametrize("bad", [91.0, -95.0, float("nan")])
def test_out_of_range_elevation(bad):
    with pytest.raises(Zero123Error, match="out of range"):
        camera.SphericalPose(bad, 0.0, 2.0)


def test_sphere_band_elevation_rules():
    u = np.random.default_rng(0).random(20000)
    el = camera.sphere_band_elevation(u, (-20.0, 70.0))
    assert el.min() >= -20.0 and el.max() <= 70.0
    # "area": sin(elevation) is uniform over [sin lo, sin hi] (Kolmogorov-Smirnov distance to the uniform CDF)
    s = np.sort(np.sin(np.radians(el)))
    lo, hi = math.sin(math.radians(-20)), math.sin(math.radians(70))
    assert np.abs((s - lo) / (hi - lo) - (np.arange(len(s)) + 0.5) / len(s)).max() < 0.015
    # "threestudio": asin(2p - 1), p uniform in [(lo + 90) / 180, (hi + 90) / 180]; torch and numpy agree
    ts = camera.sphere_band_elevation(torch.from_numpy(u), (-10.0, 80.0), "threestudio")
    ref = np.degrees(np.arcsin(2 * (80 / 180 + u * 90 / 180) - 1))
    assert np.allclose(ts.numpy(), ref, atol=1e-9)
    assert np.allclose(camera.sphere_band_elevation(u, (-10.0, 80.0), "threestudio"), ref, atol=1e-9)
    assert np.allclose(camera.sphere_band_elevation(torch.from_numpy(u), (-20.0, 70.0)).numpy(), el, atol=1e-9)
    with pytest.raises(ValueError, match="rule"):
        camera.sphere_band_elevation(u, (0.0, 1.0), "cube")


def test_projection_inverts_pixel_rays():
    c2w = camera.camera_to_world(torch.tensor([25.0]), torch.tensor([-60.0]), torch.tensor([2.5]))
    origins, dirs = camera.pixel_rays(c2w, 40.0, 6, 6)
    assert torch.allclose(origins[0, 0, 0], c2w[0, :3, 3])
    pts = origins[0] + 1.7 * dirs[0]  # [6,6,3] world points, one on each pixel's ray
    p_cam = camera.world_to_camera_points(pts.reshape(-1, 3), c2w[0])
    # the camera sits at the origin of its frame and looks down -z: distances are kept, depth is positive
    assert torch.allclose(p_cam.norm(dim=-1), torch.full((36,), 1.7), atol=1e-5) and (p_cam[:, 2] < 0).all()
    x, y, depth = camera.project_to_pixels(p_cam, 40.0, 6)
    jj, ii = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(6) + 0.5, indexing="xy")
    assert torch.allclose(x, jj.reshape(-1), atol=1e-4) and torch.allclose(y, ii.reshape(-1), atol=1e-4)
    assert torch.allclose(depth, -p_cam[:, 2])
