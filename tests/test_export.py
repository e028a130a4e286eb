"""Mesh extraction, texture baking and file writers: files re-load with the expected content."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from zero123.errors import Zero123Error
from zero123.export import (MeshExtractionConfig, atomic_write_with, bake_texture, extract_mesh, from_export_frame,
                            image_grid, rasterize_uv, vertex_colors, write_gif, write_glb, write_mp4, write_obj,
                            write_ply)
from zero123.export.mesh import fill_cavities, iso_level


class SphereField(nn.Module):
    """Density 40 inside a sphere of radius 0.6 (smooth step), albedo = position mapped to [0,1]."""

    def __init__(self, r=0.6):
        super().__init__()
        self.r, self.radius = r, 2.0
        self.p = nn.Parameter(torch.zeros(()))

    def density(self, x):
        return 40.0 * torch.sigmoid((self.r - x.norm(dim=-1)) * 60.0)

    def albedo(self, x):
        return (x / 1.4 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(SphereField(), MeshExtractionConfig(resolution=48, coarse_resolution=24))


def test_marching_cubes_sphere_volume_and_orientation(sphere_mesh):
    m = sphere_mesh
    assert m.is_watertight
    assert m.volume > 0  # outward faces
    assert m.volume == pytest.approx(4 / 3 * math.pi * 0.6 ** 3, rel=0.03)
    r = np.linalg.norm(m.vertices, axis=1)
    assert abs(r.mean() - 0.6) < 0.01 and r.std() < 0.01


def test_iso_level_auto_and_cavity_filling():
    vol = np.zeros((20, 20, 20), np.float32)
    vol[4:16, 4:16, 4:16] = 30.0
    vol[8:12, 8:12, 8:12] = 0.0             # an enclosed pocket
    vol[0, 0, 0] = 1e-3                      # faint fog counts for threestudio's level, not for the interior
    # threestudio's level: mean of densities > 1e-5; "auto" = half the mean of the cells above it
    assert iso_level(vol, "auto") == pytest.approx(15.0)
    assert iso_level(vol, 7.0) == 7.0
    with pytest.raises(Zero123Error):
        iso_level(vol, "median")
    filled = fill_cavities(vol, 15.0, margin=1)
    assert (filled[8:12, 8:12, 8:12] == 30.0).all() and filled[0, 5, 5] == 0.0 and filled[2, 10, 10] == 0.0


def test_empty_field_is_a_clear_error():
    class Empty(SphereField):
        def density(self, x):
            return torch.zeros(x.shape[0])

    with pytest.raises(Zero123Error, match="nothing to export"):
        extract_mesh(Empty(), MeshExtractionConfig(resolution=16, coarse_resolution=8, threshold=1.0))


def test_rasterize_uv_covers_the_triangle_area():
    uvs = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]], np.float32)
    texel, face, bary = rasterize_uv(uvs, np.array([[0, 1, 2]]), 64)
    area = 0.5 * 0.8 * 0.8 * 64 * 64
    perimeter = (0.8 + 0.8 + 0.8 * math.sqrt(2)) * 64
    assert area * 0.98 <= len(texel) <= area + perimeter / 2 + 1   # Pick: interior + boundary lattice points
    torch.testing.assert_close(bary.sum(1), torch.ones(len(bary)))
    assert (bary >= -1e-5).all() and (face == 0).all()
    # a covered texel's UV (from its row/col) equals the barycentric interpolation of the corner UVs
    row, col = texel // 64, texel % 64
    uv_texel = torch.stack([(col + 0.5) / 64, 1 - (row + 0.5) / 64], 1)
    torch.testing.assert_close(bary @ torch.as_tensor(uvs), uv_texel.float(), atol=1e-5, rtol=0)


def test_textured_obj_glb_ply_round_trip(sphere_mesh, tmp_path):
    field = SphereField()
    mesh = sphere_mesh
    textured = bake_texture(mesh, field.albedo, size=128)
    files = write_obj(textured, tmp_path / "model.obj")
    assert set(files) >= {"obj", "model.mtl"}
    write_glb(textured, tmp_path / "model.glb")
    colored = mesh.copy()
    colored.visual.vertex_colors = vertex_colors(mesh, field.albedo)
    write_ply(colored, tmp_path / "model.ply")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind

    obj = trimesh.load(tmp_path / "model.obj", process=False)
    assert len(obj.faces) == len(mesh.faces) == len(textured.faces)
    assert len(obj.vertices) == len(textured.vertices) >= len(mesh.vertices)  # split along UV seams
    assert obj.visual.kind == "texture" and obj.visual.material.image.size == (128, 128)
    # the texture, looked up at each vertex's UV, gives the field's albedo there
    img = np.asarray(obj.visual.material.image.convert("RGB"), dtype=np.float32) / 255
    uv = obj.visual.uv
    px = np.clip((uv[:, 0] * 128 - 0.5).round().astype(int), 0, 127)
    py = np.clip(((1 - uv[:, 1]) * 128 - 0.5).round().astype(int), 0, 127)
    # files are in the export frame (+Y up, front +Z): back to the world before asking the field
    world = from_export_frame(obj).vertices
    ref = field.albedo(torch.as_tensor(world, dtype=torch.float32)).numpy()
    err = np.abs(img[py, px] - ref).max(1)
    assert np.median(err) < 0.02 and np.mean(err < 0.06) > 0.9

    glb = trimesh.load(tmp_path / "model.glb", force="mesh")
    assert len(glb.faces) == len(mesh.faces) and glb.visual.kind == "texture"
    ply = trimesh.load(tmp_path / "model.ply", process=False)
    assert len(ply.vertices) == len(mesh.vertices) and len(ply.faces) == len(mesh.faces)
    exp = (field.albedo(torch.as_tensor(from_export_frame(ply).vertices, dtype=torch.float32)).numpy() * 255).round()
    assert np.abs(ply.visual.vertex_colors[:, :3].astype(float) - exp).max() <= 1


def _tall_object_with_a_front_bump(front_azimuth: float):
    """World (z up): a 0.3 x 0.3 x 1.0 column plus a 0.2 cube 0.35 out on the side facing azimuth ``front_azimuth``."""
    a = math.radians(front_azimuth)
    bump = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    bump.apply_translation((0.35 * math.cos(a), 0.35 * math.sin(a), 0.1))
    return trimesh.util.concatenate([trimesh.creation.box(extents=(0.3, 0.3, 1.0)), bump])


@pytest.mark.parametrize("front_azimuth", [0.0, 90.0])
def test_exported_files_are_y_up_with_the_input_side_toward_plus_z(front_azimuth, tmp_path):
    world = _tall_object_with_a_front_bump(front_azimuth)
    write_obj(world, tmp_path / "m.obj", front_azimuth)
    write_glb(world, tmp_path / "m.glb", front_azimuth)
    write_ply(world, tmp_path / "m.ply", front_azimuth)
    for name in ("m.obj", "m.glb", "m.ply"):
        m = trimesh.load(tmp_path / name, force="mesh")
        lo, hi = m.bounds
        ext = hi - lo
        assert np.argmax(ext) == 1 and ext[1] == pytest.approx(1.0, abs=1e-5), name  # tallest along +Y
        assert hi[2] == pytest.approx(0.45, abs=1e-5) and lo[2] == pytest.approx(-0.15, abs=1e-5), name  # bump +Z
        assert hi[1] == pytest.approx(0.5, abs=1e-5), name  # up is +Y, not -Y
        assert ext[0] == pytest.approx(0.3, abs=1e-5), name
        assert m.volume > 0, name  # a proper rotation: faces still point outwards
        back = from_export_frame(m, front_azimuth)
        np.testing.assert_allclose(back.bounds, world.bounds, atol=1e-5)


def _validator_module():
    mod = Path(__file__).resolve().parents[1] / ".ci" / "node" / "node_modules" / "gltf-validator"
    return mod if mod.is_dir() else None


@pytest.mark.skipif(_validator_module() is None or not shutil.which("node"),
                    reason="needs node and `npm install --prefix .ci/node gltf-validator` (.ci/run installs both)")
def test_glb_passes_the_khronos_gltf_validator(sphere_mesh, tmp_path):
    textured = bake_texture(sphere_mesh, SphereField().albedo, size=64)
    path = write_glb(textured, tmp_path / "model.glb")
    script = ("const v = require(process.argv[1]); const fs = require('fs');"
              "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
              ".then(r => console.log(JSON.stringify(r.issues)), e => { console.error(e); process.exit(3); });")
    out = subprocess.run(["node", "-e", script, str(_validator_module()), str(path)], capture_output=True,
                         text=True, timeout=60, check=True)
    issues = json.loads(out.stdout)
    codes = [m["code"] for m in issues["messages"]]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, codes
    assert issues["numHints"] == 0, codes  # trimesh leaves bufferView targets out; write_glb adds them


def test_video_and_gif_writers(tmp_path):
    import imageio.v2 as imageio

    frames = np.zeros((6, 32, 48, 3), np.uint8)
    for i in range(6):
        frames[i, :, : 8 * (i + 1)] = 255
    write_mp4(frames, tmp_path / "t.mp4", fps=6)
    got = np.stack(imageio.mimread(tmp_path / "t.mp4", format="FFMPEG", memtest=False))
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 10
    write_gif(frames, tmp_path / "t.gif", fps=6)
    gif = imageio.mimread(tmp_path / "t.gif")
    assert len(gif) == 6 and gif[0].shape[:2] == (32, 48)
    with pytest.raises(Zero123Error):
        write_mp4(np.zeros((0, 16, 16, 3), np.uint8), tmp_path / "e.mp4")
    grid = image_grid([[frames[0], frames[1]], [frames[2]]], pad=2)
    assert grid.shape == (2 * 34 + 2, 2 * 50 + 2, 3)


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"

    def boom(tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, boom)
    assert not target.exists() and list(tmp_path.iterdir()) == []
