"""CPU mesh rasteriser: silhouettes, depth, perspective-correct texturing and shading against analytic values."""

import math
import time

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from zero123.camera import camera_to_world, fov_to_focal, look_at
from zero123.errors import Zero123Error
from zero123.rendering.mesh_rasterizer import prepare_mesh, render_mesh


def _project(points: np.ndarray, c2w: torch.Tensor, fov: float, size: int) -> np.ndarray:
    """Independent pinhole projection: world points [N,3] -> pixel (x right, y down) [N,2]."""
    c2w = c2w.double().numpy()
    R, t = c2w[:3, :3], c2w[:3, 3]
    cam = (points - t) @ R  # = R^T (p - t)
    f = fov_to_focal(fov, size)
    return np.stack([size / 2 + f * cam[:, 0] / -cam[:, 2], size / 2 - f * cam[:, 1] / -cam[:, 2]], 1)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise hull vertices."""
    pts = sorted(map(tuple, pts))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _signed_dist_to_hull(hull: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Min over edges of the signed distance (positive inside) of points q [N,2] to a CCW convex polygon."""
    d = np.full(len(q), np.inf)
    for i in range(len(hull)):
        a, b = hull[i], hull[(i + 1) % len(hull)]
        e = b - a
        n = np.array([-e[1], e[0]]) / np.linalg.norm(e)  # inward normal for CCW
        d = np.minimum(d, (q - a) @ n)
    return d


@pytest.mark.parametrize("elev,azim,radius,fov", [(20.0, 30.0, 3.0, 40.0), (-35.0, 200.0, 2.2, 30.0),
                                                  (75.0, -60.0, 4.0, 25.0)])
def test_cube_silhouette_matches_analytic_projection(elev, azim, radius, fov):
    size = 96
    cube = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    c2w = camera_to_world(elev, azim, radius)
    out = render_mesh(cube, c2w, fov, size)
    mask = out["mask"][0].numpy()
    hull = _convex_hull(_project(np.asarray(cube.vertices), c2w, fov, size))
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    centres = np.stack([jj.ravel(), ii.ravel()], 1)
    sd = _signed_dist_to_hull(hull, centres).reshape(size, size)
    expected = sd > 0
    assert expected.sum() > 300  # the cube is well inside the frame
    wrong = mask != expected
    # only pixel centres lying (numerically) on the silhouette may disagree
    assert np.all(np.abs(sd[wrong]) < 1e-3), np.abs(sd[wrong]).max()
    # alpha is binary coverage without supersampling; rgb is 0 outside
    alpha = out["rgba"][0, ..., 3].numpy()
    assert set(np.unique(alpha)) <= {0.0, 1.0}
    assert np.all(out["rgba"][0, ..., :3].numpy()[~mask] == 0)
    assert np.all(out["depth"][0].numpy()[~mask] == 0)


def test_supersampled_alpha_integrates_to_projected_area():
    size = 64
    cube = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    c2w = camera_to_world(25.0, 40.0, 3.0)
    out = render_mesh(cube, c2w, 35.0, size, samples=4)
    hull = _convex_hull(_project(np.asarray(cube.vertices), c2w, 35.0, size))
    x, y = hull[:, 0], hull[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    alpha = out["rgba"][0, ..., 3].numpy()
    assert abs(alpha.sum() - area) / area < 0.01
    frac = alpha[(alpha > 0) & (alpha < 1)]
    assert len(frac) > 20  # edge pixels are partially covered


def _plane(half: float = 50.0):
    v = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], dtype=float)
    return trimesh.Trimesh(v, np.array([[0, 1, 2], [0, 2, 3]]), process=False)


@pytest.mark.parametrize("elev,azim,radius", [(90.0, 0.0, 2.0), (35.0, 10.0, 3.0), (8.0, 120.0, 1.5)])
def test_plane_depth_equals_ray_plane_intersection(elev, azim, radius):
    """A big ground plane z=0 (its corners are behind the camera at low elevation: exercises near clipping)."""
    size, fov = 48, 50.0
    c2w = camera_to_world(elev, azim, radius)
    out = render_mesh(_plane(), c2w, fov, size)
    depth = out["depth"][0].numpy().astype(np.float64)
    f = fov_to_focal(fov, size)
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    dirs_cam = np.stack([(jj - size / 2) / f, -(ii - size / 2) / f, -np.ones_like(jj)], -1)  # depth 1 along -z
    M = c2w.double().numpy()
    dirs_world = dirs_cam @ M[:3, :3].T
    origin = M[:3, 3]
    with np.errstate(divide="ignore"):
        t = -origin[2] / dirs_world[..., 2]  # ray hits z = 0 at depth t (dirs have unit -z component)
    hits = (t > 0) & np.isfinite(t)
    pts = origin + t[..., None] * dirs_world
    hits &= (np.abs(pts[..., 0]) < 50) & (np.abs(pts[..., 1]) < 50)
    assert hits.sum() > 0.3 * size * size
    np.testing.assert_array_equal(out["mask"][0].numpy(), hits)
    np.testing.assert_allclose(depth[hits], t[hits], rtol=2e-4)


def test_zbuffer_keeps_nearest_surface_regardless_of_face_order():
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=float)
    near = trimesh.Trimesh(v * [0.5, 0.5, 1] + [0, 0, 0.5], [[0, 1, 2], [0, 2, 3]], process=False)
    far = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)
    near.visual.face_colors = [255, 0, 0, 255]
    far.visual.face_colors = [0, 0, 255, 255]
    c2w = camera_to_world(90.0, 0.0, 3.0)
    for parts in ([near, far], [far, near]):
        mesh = trimesh.util.concatenate(parts)
        out = render_mesh(mesh, c2w, 60.0, 32, ambient=1.0)
        c = out["rgba"][0, 16, 16]
        assert torch.allclose(c, torch.tensor([1.0, 0.0, 0.0, 1.0]))
        assert out["depth"][0, 16, 16].item() == pytest.approx(2.5, rel=1e-5)
        corner = out["rgba"][0, 16, 8]  # only the far plane there
        assert torch.allclose(corner, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_perspective_correct_texture_boundary():
    """A textured quad seen obliquely: the u=0.5 texture edge projects to the 3D midline, not the screen midpoint."""
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    tex = np.zeros((4, 64, 3), dtype=np.uint8)
    tex[:, :32] = [255, 0, 0]
    tex[:, 32:] = [0, 255, 0]
    quad = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex)))
    # camera looking at the quad from the +x side and above: the far (x<0) half is foreshortened
    c2w = look_at(torch.tensor([2.0, 0.0, 1.2]))
    size, fov = 128, 60.0
    out = render_mesh(quad, c2w, fov, size, ambient=1.0)
    rgb = out["rgba"][0, ..., :3].numpy()
    # analytic: the line x=0 on the quad (u = 0.5) projects to a screen row position; find its y on this row
    # the image row is a horizontal line; along the image centre column the midline point is (0, 0, 0)
    mid = _project(np.array([[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), c2w, fov, size)
    # camera in the xz-plane: x-axis of the world maps to image rows; colour change along the centre column
    col = size // 2
    colr, colg = rgb[:, col, 0] > 0.5, rgb[:, col, 1] > 0.5
    rows_red = np.nonzero(colr)[0]
    rows_green = np.nonzero(colg)[0]
    # far half (x<0, red, u<0.5) is higher in the image (smaller row)
    assert rows_red.max() < rows_green.min()
    boundary = 0.5 * (rows_red.max() + rows_green.min()) + 0.5  # pixel edge between the two rows
    assert abs(boundary - mid[0, 1]) <= 1.0
    # the affine (not perspective-correct) answer would be the screen midpoint of the two edges: far from it
    affine_mid = 0.5 * (mid[1, 1] + mid[2, 1])
    assert abs(affine_mid - mid[0, 1]) > 4.0


def test_vertex_colours_interpolate_and_lambert_shading():
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=float)
    quad = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)
    quad.visual.vertex_colors = np.array([[255, 0, 0, 255], [255, 0, 0, 255], [0, 0, 255, 255],
                                          [0, 0, 255, 255]], dtype=np.uint8)
    c2w = camera_to_world(90.0, 0.0, 3.0)  # looking straight down; world +y is image-up
    out = render_mesh(quad, c2w, 60.0, 64, ambient=1.0)
    rgb = out["rgba"][0, ..., :3]
    # colour along the image centre column goes from blue (top, y=+1) to red (bottom, y=-1), linearly in y
    col = rgb[:, 32]
    m = out["mask"][0, :, 32]
    ys = -(torch.arange(64, dtype=torch.float64) + 0.5 - 32) / fov_to_focal(60.0, 64) * 3.0
    expect_red = ((1 - ys) / 2).float()
    assert torch.allclose(col[m, 0], expect_red[m], atol=2e-3)
    assert torch.allclose(col[m, 2], 1 - expect_red[m], atol=2e-3)

    # Lambert: a light at angle theta from the normal scales (1 - ambient) by cos(theta)
    quad.visual.vertex_colors = np.full((4, 4), 255, dtype=np.uint8)
    theta = math.radians(60.0)
    for ambient in (0.0, 0.3):
        out = render_mesh(quad, c2w, 60.0, 16, ambient=ambient, light_dir=[math.sin(theta), 0.0, math.cos(theta)])
        val = out["rgba"][0, 8, 8, :3]
        assert torch.allclose(val, torch.full((3,), ambient + (1 - ambient) * 0.5), atol=1e-5)
    # light from behind the surface: only ambient (two-sided normals face the camera)
    out = render_mesh(quad, c2w, 60.0, 16, ambient=0.25, light_dir=[0, 0, -1])
    assert torch.allclose(out["rgba"][0, 8, 8, :3], torch.full((3,), 0.25), atol=1e-6)
    # background compositing
    out = render_mesh(quad, camera_to_world(90.0, 0.0, 30.0), 20.0, 16, background=(0.0, 1.0, 0.0))
    assert torch.allclose(out["rgba"][0, 0, 0], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_batch_of_cameras_equals_single_renders_and_prepared_mesh():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    c2w = camera_to_world(torch.tensor([10.0, -20.0, 60.0]), torch.tensor([0.0, 100.0, 250.0]), 2.0)
    batch = render_mesh(mesh, c2w, 40.0, 32)
    pm = prepare_mesh(mesh)
    for b in range(3):
        one = render_mesh(pm, c2w[b], 40.0, 32)
        assert torch.equal(one["rgba"][0], batch["rgba"][b])
        assert torch.equal(one["depth"][0], batch["depth"][b])
    # sphere depth: the nearest point is at radius - 0.5 (icosphere vertices lie on the sphere)
    d = batch["depth"][batch["mask"]]
    assert d.min().item() == pytest.approx(1.5, abs=0.02)


def test_speed_2k_faces_256px():
    """~2k faces at 256 px in well under a second of CPU time on one core (CPU time, not wall time, so that a
    busy shared CI machine does not make this flaky)."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)  # 1280 faces
    mesh = trimesh.util.concatenate([mesh, trimesh.creation.cylinder(radius=0.2, height=1.2, sections=192)])
    assert len(mesh.faces) > 2000
    c2w = camera_to_world(20.0, 30.0, 2.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        render_mesh(mesh, c2w, 40.0, 256)  # warm-up
        times = []
        for _ in range(3):
            t = time.process_time()
            out = render_mesh(mesh, c2w, 40.0, 256)
            times.append(time.process_time() - t)
    finally:
        torch.set_num_threads(threads)
    elapsed = min(times)
    assert out["mask"].any()
    assert elapsed < 0.5, f"{elapsed:.3f}s"


def test_bad_inputs_raise_one_line_errors():
    mesh = trimesh.creation.box()
    with pytest.raises(Zero123Error, match="no triangles"):
        render_mesh(trimesh.Trimesh(), torch.eye(4), 40.0, 16)
    with pytest.raises(Zero123Error, match="c2w"):
        render_mesh(mesh, torch.eye(3), 40.0, 16)
    with pytest.raises(Zero123Error, match="fov"):
        render_mesh(mesh, torch.eye(4), 180.0, 16)
    with pytest.raises(Zero123Error, match="size"):
        render_mesh(mesh, torch.eye(4), 40.0, 0)
    bad = trimesh.Trimesh(np.array([[0, 0, np.nan], [1, 0, 0], [0, 1, 0]]), [[0, 1, 2]], process=False)
    with pytest.raises(Zero123Error, match="non-finite"):
        render_mesh(bad, torch.eye(4), 40.0, 16)
    # a camera looking away from the mesh, or a degenerate mesh, renders empty without error
    out = render_mesh(mesh, camera_to_world(0.0, 0.0, 3.0) @ torch.diag(torch.tensor([-1.0, 1, -1, 1])), 40.0, 16)
    assert not out["mask"].any()
    flat = trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float), [[0, 1, 2]], process=False)
    assert not render_mesh(flat, camera_to_world(0.0, 90.0, 3.0), 40.0, 16)["mask"].any()


def test_scene_parts_keep_their_own_textures(tmp_path):
    """A GLB scene with two differently textured parts: each part samples its own texture."""
    v = np.array([[-1, -1, 0], [0, -1, 0], [0, 1, 0], [-1, 1, 0]], dtype=float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    parts = []
    for shift, rgb in ((0.0, (250, 20, 20)), (1.0, (20, 20, 250))):
        tex = np.zeros((4, 4, 3), np.uint8)
        tex[:] = rgb
        mat = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(tex), diffuse=[255, 255, 255, 255])
        parts.append(trimesh.Trimesh(v + [shift, 0, 0], [[0, 1, 2], [0, 2, 3]], process=False,
                                     visual=trimesh.visual.TextureVisuals(uv=uv, material=mat)))
    scene = trimesh.Scene(parts)
    scene.export(tmp_path / "two.glb")
    loaded = trimesh.load(tmp_path / "two.glb")
    pm = prepare_mesh(loaded)
    assert len(pm.textures) == 2
    # glTF is y-up: the quads (z = 0 in the file) stay in a plane; look at them along that plane's normal
    first = np.asarray(loaded.dump(concatenate=False)[0].vertices)
    normal = np.cross(*(first[[1, 3]] - first[0]))
    c2w = look_at(torch.tensor(normal / np.linalg.norm(normal) * 4.0, dtype=torch.float32))
    out = render_mesh(pm, c2w, 40.0, 32, ambient=1.0)
    rgb = out["rgba"][0, ..., :3][out["mask"][0]]
    reds = ((rgb - torch.tensor([250, 20, 20]) / 255.0).abs().max(1).values < 0.02).sum().item()
    blues = ((rgb - torch.tensor([20, 20, 250]) / 255.0).abs().max(1).values < 0.02).sum().item()
    assert reds > 50 and blues > 50 and reds + blues == len(rgb)
