"""The 3D half without diffusion: metrics, and multi-view reconstruction of known meshes (small scale on CPU).

Full-scale figures: ``python -m zero123.evaluation.mesh_reconstruction sphere torus box duck``.
"""

import math

import numpy as np
import pytest
import trimesh

from zero123.errors import Zero123Error
from zero123.fields import FieldConfig
from zero123.evaluation.mesh_reconstruction import (ReconstructionConfig, analytic_shape, chamfer_distance,
                                                   closest_point_on_triangles, fibonacci_views, normalize_mesh,
                                                   point_mesh_distance, reconstruct_mesh, voxelize, volume_iou)
from zero123.rendering.volume import RenderSettings


def test_metrics_on_known_pairs():
    s = trimesh.creation.icosphere(subdivisions=4)
    small = s.copy()
    small.vertices *= 0.9
    assert chamfer_distance(s, s) < 1e-9
    assert chamfer_distance(s, small) == pytest.approx(0.1, abs=2e-3)
    assert volume_iou(s, small, 64) == pytest.approx(0.9 ** 3, abs=0.02)
    assert volume_iou(s, s, 32) == 1.0
    # voxel volumes of closed meshes
    cell = (2.1 / 63) ** 3
    box = trimesh.creation.box(extents=(1.2, 0.8, 0.6))
    assert voxelize(box, 64).sum() * cell == pytest.approx(box.volume, rel=0.06)
    torus = analytic_shape("torus")
    torus_n, _, _ = normalize_mesh(torus)
    assert voxelize(torus_n, 64).sum() * cell == pytest.approx(torus_n.volume, rel=0.06)
    assert not voxelize(torus_n, 64)[32, 32, 32]  # the hole


def test_point_to_surface_distance_is_exact_for_a_box():
    rng = np.random.default_rng(0)
    p = rng.uniform(-1.5, 1.5, (500, 3))
    q = np.abs(p) - 0.5
    exact = np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0))
    np.testing.assert_allclose(point_mesh_distance(p, trimesh.creation.box(extents=(1, 1, 1))), exact, atol=1e-9)
    a, b, c = np.zeros((1, 3)), np.array([[1.0, 0, 0]]), np.array([[0.0, 1, 0]])
    np.testing.assert_allclose(closest_point_on_triangles(np.array([[0.2, 0.2, 3.0]]), a, b, c), [[0.2, 0.2, 0]])
    np.testing.assert_allclose(closest_point_on_triangles(np.array([[2.0, 2.0, 0.0]]), a, b, c), [[0.5, 0.5, 0]])


def test_normalisation_and_views():
    m, center, scale = normalize_mesh(trimesh.creation.box(extents=(2, 2, 2)).apply_translation([3, 0, 0]))
    np.testing.assert_allclose(center, [3, 0, 0])
    assert np.linalg.norm(m.vertices, axis=1).max() == pytest.approx(1.0)
    elev, azim = fibonacci_views(40)
    assert elev.min() < -40 and elev.max() > 40 and len(np.unique(np.round(azim))) == 40
    with pytest.raises(Zero123Error):
        analytic_shape("teapot")


def small_config(steps=150):
    return ReconstructionConfig(
        field=FieldConfig(radius=1.0, n_levels=5, log2_hashmap_size=13, base_resolution=8, per_level_scale=1.6,
                          mlp_width=32, mlp_hidden_layers=1),
        render=RenderSettings(num_samples_per_ray=96), num_views=32, view_size=32, steps=steps, rays_per_step=512,
        metric_points=5000, iou_resolution=48)


@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_reconstructs_analytic_shapes_from_mesh_rasteriser_renders(shape):
    r = reconstruct_mesh(analytic_shape(shape), small_config(), seed=0)
    assert r.mesh.is_watertight or len(r.mesh.faces) > 0
    assert r.chamfer < 0.02, r.chamfer  # the bar of issue 3 (measured: sphere 0.0075, torus 0.0093)
    assert r.iou > 0.8, r.iou
    if shape == "torus":  # the hole is open
        assert not voxelize(r.mesh, 48)[24, 24, 24]


def test_reconstructs_the_pybullet_duck():
    pytest.importorskip("pybullet_data", reason="optional extra 'data' (pybullet) not installed")
    r = reconstruct_mesh(analytic_shape("duck"), small_config(), seed=0)
    assert r.chamfer < 0.06 and r.iou > 0.75, (r.chamfer, r.iou)
    assert math.isfinite(r.final_loss)
