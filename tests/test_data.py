"""Dataset layout, object sources and the multi-view dataset renderer."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from zero123.camera import load_zero123_rt, save_zero123_rt, spherical_from_position, camera_to_world
from zero123.cli import main
from zero123.data import layout
from zero123.data.objects import (PROCEDURAL_KINDS, ObjectSource, load_mesh_file, mesh_file_sources,
                                  procedural_object, procedural_sources, pybullet_available, pybullet_sources)
from zero123.data.render import (DatasetRenderSettings, assign_splits, normalize_to_unit_cube, render_dataset,
                                 render_object_views)
from zero123.errors import Zero123Error
from zero123.rendering.mesh_rasterizer import render_mesh

SMALL = dict(image_size=32, views_per_object=3, samples=1)


# ------------------------------------------------------------------------------------------------- layout
def test_camera_file_round_trip(tmp_path):
    c2w = camera_to_world(23.0, -140.0, 1.9)
    save_zero123_rt(tmp_path / "a.npy", c2w)
    rt = np.load(tmp_path / "a.npy")
    assert rt.shape == (3, 4) and rt.dtype == np.float32
    back = load_zero123_rt(tmp_path / "a.npy")
    assert torch.allclose(back, c2w, atol=1e-6)
    e, a, r = spherical_from_position(back[:3, 3])
    assert (e.item(), a.item(), r.item()) == pytest.approx((23.0, -140.0, 1.9), abs=1e-4)


def test_manifest_and_view_round_trip(tmp_path):
    m = layout.Manifest(image_size=32, fov_deg=40.0, views_per_object=2,
                        objects=[layout.ObjectEntry("a_1", "train", 2, "procedural:1"),
                                 layout.ObjectEntry("b-2", "test", 2, "x.obj")],
                        skipped=[layout.SkippedEntry("bad.obj", "cannot read")])
    layout.write_manifest(tmp_path, m)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["version"] == 1 and data["objects"][1] == {"id": "b-2", "split": "test", "num_views": 2,
                                                            "source": "x.obj"}
    back = layout.read_manifest(tmp_path)
    assert back.to_json() == m.to_json()
    assert [o.id for o in back.objects_in("test")] == ["b-2"]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left

    rgba = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    c2w = camera_to_world(10.0, 20.0, 2.0)
    layout.write_view(tmp_path, "a_1", 0, rgba, c2w)
    assert (tmp_path / "a_1" / "000.png").is_file() and (tmp_path / "a_1" / "000.npy").is_file()
    np.testing.assert_array_equal(layout.read_view_rgba(tmp_path, "a_1", 0), rgba)
    assert torch.allclose(layout.read_view_camera(tmp_path, "a_1", 0), c2w, atol=1e-6)
    # tensor on white: alpha 0 -> white (+1), alpha 255 -> the colour
    img = layout.rgba_to_tensor(rgba)
    a = rgba[..., 3:4] / 255.0
    expect = (rgba[..., :3] / 255.0 * a + (1 - a)) * 2 - 1
    assert torch.allclose(img.permute(1, 2, 0), torch.from_numpy(expect).float(), atol=1e-6)
    assert layout.rgba_to_tensor(rgba, size=16).shape == (3, 16, 16)
    with pytest.raises(Zero123Error, match="missing"):
        layout.check_dataset(tmp_path)  # b-2 and a_1/001 are missing


@pytest.mark.parametrize("bad,match", [({"version": 2}, "version"),
                                       ({"objects": [{"id": "../x", "split": "train", "num_views": 1}]},
                                        "invalid object id"),
                                       ({"objects": [{"id": "a", "split": "dev", "num_views": 1}]}, "split"),
                                       ({"fov_deg": 0}, "fov"), ({"image_size": "x"}, "malformed")])
def test_manifest_validation(tmp_path, bad, match):
    d = {"version": 1, "image_size": 32, "fov_deg": 40.0, "views_per_object": 2, "objects": [], "skipped": []}
    d.update(bad)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(Zero123Error, match=match):
        layout.read_manifest(tmp_path)
    with pytest.raises(Zero123Error, match="not a rendered dataset"):
        layout.read_manifest(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ objects
def test_procedural_objects_are_deterministic_and_varied():
    a, b = procedural_object(7), procedural_object(7)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(np.asarray(a.visual.material.image), np.asarray(b.visual.material.image))
    c = procedural_object(8)
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)
    kinds = {procedural_object(s).metadata["procedural_kind"] for s in range(40)}
    assert kinds == set(PROCEDURAL_KINDS)
    for kind in PROCEDURAL_KINDS:
        m = procedural_object(3, kind)
        assert m.visual.kind == "texture"
        uv = np.asarray(m.visual.uv)
        assert uv.min() >= 0 and uv.max() <= 1 and len(uv) == len(m.vertices)
        assert np.isfinite(m.vertices).all() and len(m.faces) > 20
    with pytest.raises(Zero123Error, match="procedural kind"):
        procedural_object(0, "spaceship")


def test_procedural_objects_look_different_from_front_and_back():
    """Most objects are asymmetric: for some azimuth, the view from the opposite side is not the mirror image.

    (The view of an object from azimuth a + 180 equals the mirrored view from a exactly when the object is
    mirror-symmetric about the plane through the z axis perpendicular to the view direction.)"""
    differs = 0
    az = torch.tensor([0.0, 60.0, 120.0, 180.0, 240.0, 300.0])
    for seed in range(8):
        pm = normalize_to_unit_cube(procedural_object(seed))
        out = render_mesh(pm, camera_to_world(torch.zeros(6), az, 2.0), 49.1, 32, ambient=1.0, background=(1, 1, 1))
        rgb = out["rgba"][..., :3]
        # fraction of pixels (relative to the object's area) that differ from the mirrored opposite view
        diff = max(((rgb[k] - rgb[k + 3].flip(1)).abs().sum(-1) > 0.3).sum().item() / out["mask"][k].sum().item()
                   for k in range(3))
        differs += diff > 0.1
    assert differs >= 7


def test_normalize_to_unit_cube():
    mesh = trimesh.creation.box(extents=[4.0, 2.0, 1.0])
    mesh.apply_translation([10.0, -3.0, 5.0])
    pm = normalize_to_unit_cube(mesh)
    b = pm.bounds
    assert torch.allclose(b[0], torch.tensor([-0.5, -0.25, -0.125]), atol=1e-6)
    assert torch.allclose(b[1], torch.tensor([0.5, 0.25, 0.125]), atol=1e-6)
    flat = trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]], process=False)
    with pytest.raises(Zero123Error, match="degenerate"):
        normalize_to_unit_cube(flat)


def test_mesh_files_textures_and_up_axis(tmp_path):
    # a textured quad in the xy-plane, exported as GLB (y-up by convention) and OBJ
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=float)
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:] = [200, 30, 40]
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(tex), diffuse=[255, 255, 255, 255])
    quad = trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False, visual=trimesh.visual.TextureVisuals(
        uv=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float), material=material))
    quad.export(tmp_path / "quad.glb")
    quad.export(tmp_path / "quad.obj")
    pc = trimesh.creation.icosphere(subdivisions=1)
    pc.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(pc.vertices), 1)).astype(np.uint8)
    pc.export(tmp_path / "ball.ply")
    for name, up in (("quad.glb", "y"), ("quad.obj", "y"), ("quad.obj", "z")):
        g = load_mesh_file(tmp_path / name, up=up)
        pm = normalize_to_unit_cube(g)
        ext = (pm.bounds[1] - pm.bounds[0]).numpy()
        # y-up import turns the xy-plane quad into the xz-plane (y extent 0); z-up keeps it flat (z extent 0)
        assert ext[1 if up == "y" else 2] == pytest.approx(0.0, abs=1e-6)
        # looking straight at the quad, ambient 1: the texture colour
        c2w = camera_to_world(0.0, -90.0, 2.0) if up == "y" else camera_to_world(90.0, 0.0, 2.0)
        out = render_mesh(pm, c2w, 40.0, 16, ambient=1.0)
        assert torch.allclose(out["rgba"][0, 8, 8, :3], torch.tensor([200, 30, 40]) / 255.0, atol=2 / 255)
    pm = normalize_to_unit_cube(load_mesh_file(tmp_path / "ball.ply", up="z"))
    out = render_mesh(pm, camera_to_world(0.0, 0.0, 2.0), 40.0, 16, ambient=1.0)
    assert torch.allclose(out["rgba"][0, 8, 8, :3], torch.tensor([10, 200, 30]) / 255.0, atol=2 / 255)
    srcs = mesh_file_sources([str(tmp_path), str(tmp_path / "*.obj")])
    # sorted, de-duplicated by path, ids unique (a clashing stem gets its folder name)
    assert [Path(s.ref).name for s in srcs] == ["ball.ply", "quad.glb", "quad.obj"]
    assert [s.id for s in srcs] == ["ball", "quad", layout.sanitize_object_id(f"{tmp_path.name}_quad")]
    with pytest.raises(Zero123Error, match="no mesh files"):
        mesh_file_sources([str(tmp_path / "*.fbx")])
    with pytest.raises(Zero123Error, match="no such mesh"):
        load_mesh_file(tmp_path / "nope.obj")


def test_assign_splits_deterministic_and_by_object():
    ids = [f"o{i}" for i in range(50)]
    s1 = assign_splits(ids, seed=3, test_fraction=0.2, val_fraction=0.1)
    s2 = assign_splits(list(reversed(ids)), seed=3, test_fraction=0.2, val_fraction=0.1)
    assert s1 == s2
    assert sum(v == "test" for v in s1.values()) == 10 and sum(v == "val" for v in s1.values()) == 5
    assert assign_splits(ids, seed=4, test_fraction=0.2) != assign_splits(ids, seed=3, test_fraction=0.2)
    assert list(assign_splits(["a", "b"], 0, 0.1).values()).count("test") == 1
    assert set(assign_splits(["a"], 0, 0.1).values()) == {"train"}


# ----------------------------------------------------------------------------------------------- renderer
def _make_inputs(tmp_path):
    d = tmp_path / "meshes"
    d.mkdir()
    box = trimesh.creation.box(extents=[1.0, 2.0, 0.5])
    box.visual.face_colors = [255, 128, 0, 255]
    box.export(d / "box.ply")
    (d / "empty.obj").write_text("# nothing here\n")
    (d / "garbage.glb").write_bytes(b"\x00not a glb at all" * 10)
    trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0.0]]), [[0, 1, 2]], process=False).export(d / "line.ply")
    return d


def test_render_dataset_end_to_end(tmp_path):
    meshes = _make_inputs(tmp_path)
    sources = procedural_sources(3, seed=1) + mesh_file_sources([str(meshes)], up="z")
    settings = DatasetRenderSettings(**SMALL, seed=5, test_fraction=0.34)
    root = tmp_path / "ds"
    m = render_dataset(sources, root, settings, workers=1, progress=False)
    assert {o.id for o in m.objects} == {"proc_1_00000", "proc_1_00001", "proc_1_00002", "box"}
    reasons = {s.path.split("/")[-1]: s.reason for s in m.skipped}
    assert set(reasons) == {"empty.obj", "garbage.glb", "line.ply"}
    assert all(r and "\n" not in r for r in reasons.values())
    assert "degenerate" in reasons["line.ply"] or "no triangles" in reasons["line.ply"]
    assert not (root / "line").exists() and not (root / "empty").exists()
    m2 = layout.check_dataset(root)
    assert m2.to_json()["objects"] == m.to_json()["objects"]
    assert {o.split for o in m.objects} <= {"train", "test"} and len(m.objects_in("test")) >= 1
    for o in m.objects:
        assert o.num_views == 3
        for i in range(3):
            rgba = layout.read_view_rgba(root, o.id, i)
            assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8
            assert rgba[..., 3].max() == 255 and rgba[0, 0, 3] == 0  # object present, corners transparent
            c2w = layout.read_view_camera(root, o.id, i)
            e, a, r = spherical_from_position(c2w[:3, 3])
            assert -20.0 - 1e-4 <= e.item() <= 70.0 + 1e-4 and 1.5 - 1e-5 <= r.item() <= 2.2 + 1e-5
            # camera looks at the origin: its -z axis points from its position to the origin
            assert torch.allclose(-c2w[:3, 2], -c2w[:3, 3] / r, atol=1e-5)
    # the saved camera reproduces the saved silhouette (image and camera file agree)
    src = {s.id: s for s in sources}["box"]
    pm = normalize_to_unit_cube(src.load())
    for i in range(3):
        c2w = layout.read_view_camera(root, "box", i)
        out = render_mesh(pm, c2w, settings.fov_deg, 32)
        saved_alpha = layout.read_view_rgba(root, "box", i)[..., 3] > 127
        assert (out["mask"][0].numpy() != saved_alpha).mean() < 0.01
    # the box is uniformly orange: lit pixels keep its hue (r > g > b)
    px = layout.read_view_rgba(root, "box", 0)
    sel = px[..., 3] == 255
    assert (px[sel][:, 0] >= px[sel][:, 1]).all() and (px[sel][:, 1] >= px[sel][:, 2]).all()
    # an existing dataset is not overwritten by accident
    with pytest.raises(Zero123Error, match="already holds"):
        render_dataset(sources, root, settings, workers=1, progress=False)


def test_render_dataset_deterministic_across_workers(tmp_path):
    sources = procedural_sources(3, seed=2)
    settings = DatasetRenderSettings(**SMALL, seed=9)
    a = render_dataset(sources, tmp_path / "a", settings, workers=1, progress=False)
    b = render_dataset(sources, tmp_path / "b", settings, workers=2, progress=False)
    assert a.to_json()["objects"] == b.to_json()["objects"]
    for o in a.objects:
        for i in range(o.num_views):
            np.testing.assert_array_equal(layout.read_view_rgba(tmp_path / "a", o.id, i),
                                          layout.read_view_rgba(tmp_path / "b", o.id, i))
            assert torch.equal(layout.read_view_camera(tmp_path / "a", o.id, i),
                               layout.read_view_camera(tmp_path / "b", o.id, i))
    # a different seed gives different cameras
    rgba, c2w = render_object_views(procedural_object(0), "x", DatasetRenderSettings(**SMALL, seed=1))
    rgba2, c2w2 = render_object_views(procedural_object(0), "x", DatasetRenderSettings(**SMALL, seed=2))
    assert not torch.allclose(c2w, c2w2)


def test_render_settings_validation():
    with pytest.raises(Zero123Error, match="elevation range"):
        DatasetRenderSettings(elevation_range=(10.0, -10.0)).validate()
    with pytest.raises(Zero123Error, match="fractions"):
        DatasetRenderSettings(test_fraction=0.6, val_fraction=0.5).validate()
    with pytest.raises(Zero123Error, match="image size"):
        DatasetRenderSettings(image_size=2).validate()


def test_cli_render_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["render-dataset", "--out", str(out), "--procedural", "2", "--views", "2", "--size", "24",
               "--samples", "1", "--workers", "1", "--quiet", "--test-fraction", "0.5"])
    assert rc == 0
    m = layout.read_manifest(out)
    assert m.image_size == 24 and m.views_per_object == 2 and len(m.objects) == 2
    assert [o.split for o in m.objects].count("test") == 1
    assert "rendered 2 objects x 2 views" in capsys.readouterr().out
    rc = main(["render-dataset", "--out", str(tmp_path / "none")])
    assert rc == 2
    assert "no objects to render" in capsys.readouterr().err


@pytest.mark.skipif(not pybullet_available(),
                    reason="pybullet not installed (optional extra: pip install 'zero123[data]')")
def test_pybullet_meshes(tmp_path):
    srcs = pybullet_sources()
    ids = {s.id for s in srcs}
    assert {"pybullet_duck", "pybullet_soccerball", "pybullet_torus"} <= ids
    assert sum(i.startswith("pybullet_random_") for i in ids) == 1000
    # the duck is textured (duckCM.png): a yellow body
    duck = {s.id: s for s in srcs}["pybullet_duck"]
    pm = normalize_to_unit_cube(duck.load())
    assert len(pm.textures) == 1
    out = render_mesh(pm, camera_to_world(20.0, 45.0, 2.0), 49.1, 48, ambient=1.0)
    mean = out["rgba"][0, ..., :3][out["mask"][0]].mean(0)
    assert mean[0] > 0.6 and mean[1] > 0.5 and mean[2] < 0.35
    # a random_urdfs shape takes its URDF colour (random_urdfs/000: rgba 0.04 0.07 0.91)
    r0 = {s.id: s for s in srcs}["pybullet_random_000"]
    assert r0.color == pytest.approx((0.04, 0.07, 0.91))
    out = render_mesh(normalize_to_unit_cube(r0.load()), camera_to_world(20.0, 45.0, 2.0), 49.1, 32, ambient=1.0)
    assert torch.allclose(out["rgba"][0][out["mask"][0]][:, :3].mean(0), torch.tensor([0.04, 0.07, 0.91]),
                          atol=0.01)
    m = render_dataset(pybullet_sources(limit=2), tmp_path / "pb", DatasetRenderSettings(**SMALL), workers=1,
                       progress=False)
    assert [o.source for o in m.objects] == ["pybullet:duck.obj", "pybullet:soccerball.obj"]


def test_pybullet_missing_gives_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("pybullet"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert not pybullet_available()
    with pytest.raises(Zero123Error, match="pip install"):
        pybullet_sources()
    with pytest.raises(Zero123Error, match="pybullet is not installed"):
        ObjectSource("pybullet_duck", "pybullet", "duck.obj").load()


# ------------------------------------------------------------------------------------------------- merging
def test_merge_datasets_keeps_splits_and_reads_like_the_sources(tmp_path, capsys):
    from zero123.training.dataset import ViewPairDataset

    a, b = tmp_path / "a", tmp_path / "b"
    ma = render_dataset(procedural_sources(3, seed=0), a, DatasetRenderSettings(**SMALL, seed=0, test_fraction=0.34),
                        workers=1, progress=False)
    mb = render_dataset(procedural_sources(2, seed=1), b, DatasetRenderSettings(**SMALL, seed=1, test_fraction=0.0),
                        workers=1, progress=False)
    assert main(["merge-datasets", "--out", str(tmp_path / "m"), str(a), str(b)]) == 0
    assert "5 objects (4 train, 0 val, 1 test)" in capsys.readouterr().out
    m = layout.read_manifest(tmp_path / "m")
    assert [(o.id, o.split) for o in m.objects] == [(o.id, o.split) for o in ma.objects + mb.objects]
    assert (m.image_size, m.fov_deg) == (ma.image_size, ma.fov_deg)
    # the merged training split reads exactly the sources' files (images and camera matrices)
    merged = ViewPairDataset(tmp_path / "m", "train", seed=0)
    for i, o in enumerate(merged.objects):
        src = a if o.id.startswith("proc_0_") else b
        single = ViewPairDataset(src, "train", seed=0)
        j = [x.id for x in single.objects].index(o.id)
        x, y = merged[(7, i)], single[(7, j)]
        assert all(torch.equal(x[k], y[k]) for k in ("target", "cond", "camera"))
    # bad input: an existing output, a repeated object id, a different image size -> one line, nothing written
    c = tmp_path / "c"
    render_dataset(procedural_sources(1, seed=2), c,
                   DatasetRenderSettings(image_size=16, views_per_object=2, samples=1), workers=1, progress=False)
    for roots, out, msg in [((a,), "m", "already exists"), ((a, a), "m2", "'proc_0_00000' is in both"),
                            ((a, c), "m3", "image size 16 px")]:
        assert main(["merge-datasets", "--out", str(tmp_path / out)] + [str(r) for r in roots]) == 2
        err = capsys.readouterr().err
        assert err.startswith("zero123: error:") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
