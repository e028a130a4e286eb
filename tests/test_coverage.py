"""The one triangle-coverage kernel (zero123.rendering.coverage) against a brute-force reference, and its three
users against outputs of the three kernels it replaced (numbers recorded from them before they were deleted)."""

import numpy as np
import pytest
import torch
import trimesh

from zero123.rendering.coverage import covered_points, triangle_coverage


def _brute_force(tri: np.ndarray, width: int, height: int, eps: float):
    """Every (triangle, grid point) pair tested by solving for its barycentrics with numpy (float64)."""
    ys, xs = np.mgrid[:height, :width]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 0).astype(np.float64)  # [3,P]
    hits = []
    for k, t in enumerate(tri):
        m = np.vstack([t.T, np.ones(3)])  # [[x0 x1 x2], [y0 y1 y2], [1 1 1]]
        if abs(np.linalg.det(m)) <= 1e-12:
            continue
        bary = np.linalg.solve(m, pts).T  # [P,3]
        for p in np.nonzero((bary >= -eps).all(1))[0]:
            hits.append((k, int(pts[1, p]), int(pts[0, p]), *bary[p]))
    return sorted(hits)


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_kernel_matches_brute_force_on_random_triangles(eps):
    rng = np.random.default_rng(0)
    tri = rng.uniform(-3, 15, (40, 3, 2))
    tri[:5] = tri[:5] * np.array([1.0, 0.0]) + 4.0  # degenerate (zero-area) triangles cover nothing
    tri[5:10] *= 0.3  # small ones, some between sample points
    ref = _brute_force(tri, 13, 11, eps)
    cov = covered_points(torch.from_numpy(tri), 13, 11, eps=eps)
    got = sorted(zip(cov.tri.tolist(), cov.y.tolist(), cov.x.tolist(), *cov.bary.T.tolist()))
    assert [g[:3] for g in got] == [r[:3] for r in ref] and len(ref) > 200
    assert np.allclose([g[3:] for g in got], [r[3:] for r in ref], atol=1e-9)
    # both windings, and any chunk size, give the same pairs
    flipped = covered_points(torch.from_numpy(tri[:, ::-1].copy()), 13, 11, eps=eps)
    assert torch.equal(flipped.x, cov.x) and torch.equal(flipped.tri, cov.tri)
    assert torch.allclose(flipped.bary.flip(1), cov.bary)
    chunks = list(triangle_coverage(torch.from_numpy(tri), 13, 11, eps=eps, chunk=7))
    assert len(chunks) > 5
    assert torch.equal(torch.cat([c.tri for c in chunks]), cov.tri)
    assert torch.equal(torch.cat([c.y * 13 + c.x for c in chunks]), cov.y * 13 + cov.x)


def test_kernel_edge_cases():
    assert len(covered_points(torch.zeros(0, 3, 2), 8, 8).tri) == 0
    outside = torch.tensor([[[-5.0, -5.0], [-1.0, -5.0], [-5.0, -1.0]]])
    assert len(covered_points(outside, 8, 8).tri) == 0
    with pytest.raises(ValueError, match=r"\[T,3,2\]"):
        covered_points(torch.zeros(4, 3), 8, 8)


def test_users_reproduce_the_replaced_kernels():
    """Counts the old ``export.texture.rasterize_uv`` and ``mesh_reconstruction.voxelize`` gave on these inputs."""
    from zero123.export.texture import rasterize_uv
    from zero123.evaluation.mesh_reconstruction import voxelize

    box, cyl = trimesh.creation.box((0.8, 0.5, 0.6)), trimesh.creation.cylinder(0.4, 1.0, sections=24)
    assert voxelize(box, 32).sum() == 768 and voxelize(cyl, 32).sum() == 1568
    assert voxelize(trimesh.creation.icosphere(3, 0.6), 32).sum() == 2872
    rng = np.random.default_rng(0)
    rng.random((len(trimesh.creation.icosphere(3, 0.6).vertices), 2))  # the sphere's uvs came first
    texel, face, bary = rasterize_uv(rng.random((len(box.vertices), 2)), np.asarray(box.faces), 128)
    assert len(texel) == 20062 and bary.dtype == torch.float32
    assert torch.allclose(bary.sum(1), torch.ones(len(bary))) and (bary >= -1e-6).all()
