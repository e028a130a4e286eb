"""Headless CPU mesh rasteriser (pure PyTorch): RGBA, depth and coverage of a triangle mesh from orbit cameras.

Used for ground-truth renders (datasets, evaluation, tests). No GPU and no OpenGL context are needed.

Conventions (all from :mod:`zero123.camera`): world frame z up; ``c2w`` are 4x4 camera-to-world matrices with
OpenGL axes (the camera looks down its own -z, +y is up in the image, +x right); ``fov_deg`` is the vertical
field of view in degrees; images are square, ``size x size``, row 0 at the top. Pixel ``(row i, col j)`` samples
the ray through its centre ``(j + 0.5, i + 0.5)``.

Algorithm: vertices are moved to camera space, triangles that cross the near plane are clipped (so cameras may sit
inside big meshes), every triangle is expanded into the pixel centres of its screen bounding box, the screen-space
barycentrics decide coverage (:mod:`zero123.rendering.coverage`, the package's one coverage kernel), and a z-buffer
(scatter-min over pixel index) keeps the nearest fragment per pixel. Attributes are interpolated
perspective-correctly (barycentrics divided by depth).
Triangles are two-sided (no back-face culling; normals are flipped to face the camera for shading).

Colours: a ``TextureVisuals`` with an image is sampled at the interpolated UV (bilinear, wrap-around; the
material's base colour multiplies it for PBR materials); a ``TextureVisuals`` without an image uses its material
colour; ``ColorVisuals`` give per-vertex (interpolated) or per-face colours. Shading is Lambert + ambient:
``rgb = albedo * (ambient + (1 - ambient) * max(0, n . l))`` with ``l`` the unit direction towards the light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..camera import project_to_pixels, world_to_camera_points
from ..errors import Zero123Error
from .coverage import triangle_coverage

__all__ = ["render_mesh", "PreparedMesh", "prepare_mesh"]

#: Upper bound on (triangle, pixel) candidate pairs processed at once (the coverage kernel's chunk, ~200 bytes/pair).
_CHUNK_PAIRS = 1 << 21


@dataclass
class PreparedMesh:
    """Per-mesh arrays the rasteriser needs, computed once and reused for every view.

    ``vertices`` [V,3] float32 world units; ``faces`` [F,3] int64; ``corner_normals`` [F,3,3] unit shading
    normals per face corner (smooth where the surface is smooth, the face normal across creases);
    ``corner_colors`` [F,3,3] albedo in [0,1] per corner (used where a face has no texture);
    ``face_texture`` [F] int64 index into ``textures`` (-1: none); ``corner_uv`` [F,3,2] (origin bottom-left);
    ``textures`` list of [3,Ht,Wt] float32 in [0,1] and ``texture_factors`` [K,3] multipliers.
    Several parts with different materials (a ``Scene``) are kept apart by ``face_texture``.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    corner_normals: torch.Tensor
    corner_colors: torch.Tensor
    face_texture: torch.Tensor
    corner_uv: torch.Tensor
    textures: List[torch.Tensor] = field(default_factory=list)
    texture_factors: Optional[torch.Tensor] = None

    @property
    def bounds(self) -> torch.Tensor:
        """``[2,3]`` axis-aligned bounding box (min, max) of the referenced vertices."""
        v = self.vertices[torch.unique(self.faces)]
        return torch.stack([v.min(0).values, v.max(0).values])

    def transformed(self, scale: float, offset) -> "PreparedMesh":
        """A copy with vertices ``scale * (v + offset)`` (normals unchanged for a positive uniform scale)."""
        if not scale > 0:
            raise Zero123Error(f"scale must be > 0, got {scale}")
        off = torch.as_tensor(np.asarray(offset, dtype=np.float32))
        return replace(self, vertices=(self.vertices + off) * float(scale))


def _to_rgb01(color) -> np.ndarray:
    c = np.asarray(color).reshape(-1)
    if c.size < 3:
        return np.full(3, 0.8)
    scale = 255.0 if np.issubdtype(c.dtype, np.integer) or c[:3].max() > 1.0 + 1e-6 else 1.0
    return np.clip(c[:3].astype(np.float64) / scale, 0.0, 1.0)


def _material_color_and_image(material):
    """(base colour [3] in [0,1], PIL image or None, texture multiplier [3]) of a trimesh material.

    PBR materials (glTF) multiply the texture by ``baseColorFactor``; for simple (OBJ/MTL) materials the texture
    is used as is, as Blender does (trimesh fills a default grey ``Kd`` that must not darken it).
    """
    image, color, factor = None, np.full(3, 0.8), np.ones(3)
    if material is None:
        return color, image, factor
    for attr in ("baseColorTexture", "image"):
        img = getattr(material, attr, None)
        if img is not None:
            image = img
            break
    pbr = getattr(material, "baseColorFactor", None)
    if pbr is not None:
        color = factor = _to_rgb01(pbr)
    else:
        for attr in ("main_color", "diffuse"):
            c = getattr(material, attr, None)
            if c is not None:
                color = _to_rgb01(c)
                break
    return color, image, factor


def _geometries(mesh) -> list:
    """Triangle meshes of a Trimesh / Scene (scene-graph transforms applied) / list of Trimesh."""
    import trimesh

    if isinstance(mesh, trimesh.Trimesh):
        return [mesh]
    if isinstance(mesh, trimesh.Scene):
        return [g for g in mesh.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    if isinstance(mesh, (list, tuple)) and all(isinstance(g, trimesh.Trimesh) for g in mesh):
        return list(mesh)
    raise Zero123Error(f"expected a trimesh.Trimesh or trimesh.Scene, got {type(mesh).__name__}")


def prepare_mesh(mesh, smooth_angle_deg: float = 30.0) -> PreparedMesh:
    """Extract the arrays of a ``trimesh.Trimesh``, ``trimesh.Scene`` or list of meshes for :func:`render_mesh`.

    ``smooth_angle_deg``: a corner uses the averaged vertex normal when it is within this angle of the face
    normal (smooth shading on curved parts), else the face normal (sharp creases stay sharp).
    Raises ``Zero123Error`` for a mesh without triangles or with non-finite vertices / bad face indices.
    """
    geoms = [g for g in _geometries(mesh) if len(g.faces) and len(g.vertices)]
    if not geoms:
        raise Zero123Error("mesh has no triangles")
    verts, faces, colors, tex_ids, uvs, textures, factors = [], [], [], [], [], [], []
    base = 0
    for g in geoms:
        v = np.asarray(g.vertices, dtype=np.float64)
        f = np.asarray(g.faces, dtype=np.int64)
        if not np.isfinite(v).all():
            raise Zero123Error("mesh has non-finite vertex coordinates")
        if f.min() < 0 or f.max() >= len(v):
            raise Zero123Error("mesh has face indices out of range")
        nf = len(f)
        col = np.full((nf, 3, 3), 0.8)
        tid = np.full(nf, -1, dtype=np.int64)
        uv_c = np.zeros((nf, 3, 2))
        visual = getattr(g, "visual", None)
        kind = getattr(visual, "kind", None)
        if kind == "texture":
            color, image, factor = _material_color_and_image(getattr(visual, "material", None))
            uv = getattr(visual, "uv", None)
            col[:] = color
            if image is not None and uv is not None and len(uv) == len(v):
                tex = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                tid[:] = len(textures)
                textures.append(torch.from_numpy(tex).permute(2, 0, 1).contiguous())
                factors.append(factor)
                uv_c = np.asarray(uv, dtype=np.float64)[f]
        elif kind == "vertex":
            col = (np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0)[f]
        elif kind == "face":
            col[:] = (np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0)[:, None, :]
        verts.append(v)
        faces.append(f + base)
        colors.append(col)
        tex_ids.append(tid)
        uvs.append(uv_c)
        base += len(v)
    vertices = np.concatenate(verts)
    faces = np.concatenate(faces)

    tri = vertices[faces]  # [F,3,3]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    fn_len = np.linalg.norm(fn, axis=-1, keepdims=True)
    fn = np.where(fn_len > 1e-20, fn / np.maximum(fn_len, 1e-30), np.array([0.0, 0.0, 1.0]))
    # area-weighted vertex normals (same orientation as face normals)
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn * fn_len)
    vn_len = np.linalg.norm(vn, axis=-1, keepdims=True)
    vn = np.where(vn_len > 1e-20, vn / np.maximum(vn_len, 1e-30), 0.0)
    cn = vn[faces]  # [F,3,3]
    cos_thr = math.cos(math.radians(smooth_angle_deg))
    use_vn = (np.einsum("fkc,fc->fk", cn, fn) >= cos_thr)[..., None]
    corner_normals = np.where(use_vn, cn, fn[:, None, :])

    return PreparedMesh(
        vertices=torch.from_numpy(vertices.astype(np.float32)),
        faces=torch.from_numpy(faces),
        corner_normals=torch.from_numpy(corner_normals.astype(np.float32)),
        corner_colors=torch.from_numpy(np.clip(np.concatenate(colors), 0, 1).astype(np.float32)),
        face_texture=torch.from_numpy(np.concatenate(tex_ids)),
        corner_uv=torch.from_numpy(np.concatenate(uvs).astype(np.float32)),
        textures=textures,
        texture_factors=torch.from_numpy(np.array(factors, dtype=np.float32).reshape(-1, 3)),
    )


def _clip_near(d: torch.Tensor, near: float):
    """Clip triangles against the plane ``depth = near``.

    ``d`` [F,3] vertex depths (distance along -z). Returns (face index [T], weights [T,3,3]): row k of
    ``weights[t]`` gives the k-th vertex of raster triangle t as a convex combination of the original face's
    three vertices.
    """
    front = d > near
    k = front.sum(1)
    eye = torch.eye(3, dtype=d.dtype)
    ids_all = torch.nonzero(k == 3).squeeze(1)
    parts_idx = [ids_all]
    parts_w = [eye.expand(len(ids_all), 3, 3)]

    # one vertex behind: c behind, a = c+1, b = c+2 -> quad (a, b, Q_bc), (a, Q_bc, P_ac)
    ids = torch.nonzero(k == 2).squeeze(1)
    if len(ids):
        c = (~front[ids]).to(torch.int64).argmax(1)
        a, b = (c + 1) % 3, (c + 2) % 3
        dd = d[ids]
        da, db, dc = dd.gather(1, a[:, None])[:, 0], dd.gather(1, b[:, None])[:, 0], dd.gather(1, c[:, None])[:, 0]
        ta, tb = (da - near) / (da - dc), (db - near) / (db - dc)
        ea, eb, ec = eye[a], eye[b], eye[c]
        P = ea + ta[:, None] * (ec - ea)
        Q = eb + tb[:, None] * (ec - eb)
        parts_idx += [ids, ids]
        parts_w += [torch.stack([ea, eb, Q], 1), torch.stack([ea, Q, P], 1)]
    # two vertices behind: a in front -> (a, P_ab, Q_ac)
    ids = torch.nonzero(k == 1).squeeze(1)
    if len(ids):
        a = front[ids].to(torch.int64).argmax(1)
        b, c = (a + 1) % 3, (a + 2) % 3
        dd = d[ids]
        da, db, dc = dd.gather(1, a[:, None])[:, 0], dd.gather(1, b[:, None])[:, 0], dd.gather(1, c[:, None])[:, 0]
        tb, tc = (da - near) / (da - db), (da - near) / (da - dc)
        ea, eb, ec = eye[a], eye[b], eye[c]
        parts_idx.append(ids)
        parts_w.append(torch.stack([ea, ea + tb[:, None] * (eb - ea), ea + tc[:, None] * (ec - ea)], 1))
    return torch.cat(parts_idx), torch.cat(parts_w)


def _rasterize_view(pm: PreparedMesh, c2w: torch.Tensor, fov_deg: float, size: int, near: float):
    """Z-buffer one view. Returns (zbuf [size*size] (inf = empty), face [size*size] (-1 = empty),
    bary [size*size,3] perspective-correct barycentrics w.r.t. the original face)."""
    n_pix = size * size
    v_cam = world_to_camera_points(pm.vertices, c2w)  # [V,3]
    tri_cam = v_cam[pm.faces]  # [F,3,3]
    depth = -tri_cam[..., 2]  # [F,3]
    face_id, weights = _clip_near(depth, near)
    zbuf = torch.full((n_pix,), float("inf"), dtype=torch.float64)
    fbuf = torch.full((n_pix,), -1, dtype=torch.int64)
    bbuf = torch.zeros(n_pix, 3, dtype=torch.float64)
    if len(face_id) == 0:
        return zbuf.float(), fbuf, bbuf.float()
    # screen-space set-up in float64: clipped triangles can have huge screen coordinates, and float32 edge
    # functions would lose ~1e-3 relative accuracy there
    tri_cam, weights = tri_cam.double(), weights.double()
    rt = weights @ tri_cam[face_id]  # [T,3,3] raster triangle vertices, camera space
    sx, sy, d = project_to_pixels(rt, fov_deg, size, min_depth=near * 0.5)  # [T,3] pixel x (right), y (down), depth

    inv_d = 1.0 / d
    # pixel centres (j + 0.5, i + 0.5) are the kernel's integer sample points
    for cov in triangle_coverage(torch.stack([sx, sy], -1) - 0.5, size, size, chunk=_CHUNK_PAIRS):
        t, pix = cov.tri, cov.y * size + cov.x
        # barycentrics are unclamped: exact planar extrapolation for centres just outside an edge
        z = 1.0 / (cov.bary * inv_d[t]).sum(1)  # perspective-correct depth (1/depth is linear on screen)
        zmin = torch.full((n_pix,), float("inf"), dtype=z.dtype).scatter_reduce(0, pix, z, reduce="amin")
        win = (z <= zmin[pix]) & (z < zbuf[pix])
        w_idx = torch.nonzero(win).squeeze(1)
        if len(w_idx) == 0:
            continue
        # one winner per pixel (ties: the highest candidate index), deterministic
        best = torch.full((n_pix,), -1, dtype=torch.int64).scatter_reduce(0, pix[w_idx], w_idx, reduce="amax")
        upd = torch.nonzero(best >= 0).squeeze(1)
        sel = best[upd]
        ts, zs = t[sel], z[sel]
        bc = cov.bary[sel] * inv_d[ts] * zs[:, None]  # perspective-correct barycentrics w.r.t. the raster triangle
        zbuf[upd] = zs
        fbuf[upd] = face_id[ts]
        bbuf[upd] = torch.einsum("nk,nkj->nj", bc, weights[ts])
    return zbuf.float(), fbuf, bbuf.float()


def _sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear, wrap-around sampling of ``texture`` [3,Ht,Wt] at ``uv`` [N,2] (origin bottom-left) -> [N,3]."""
    if uv.shape[0] == 0:
        return torch.zeros(0, 3)
    uv = torch.nan_to_num(uv, nan=0.0, posinf=0.0, neginf=0.0)
    u = uv[:, 0] - torch.floor(uv[:, 0])
    v = uv[:, 1] - torch.floor(uv[:, 1])
    grid = torch.stack([u * 2 - 1, (1 - v) * 2 - 1], -1).view(1, 1, -1, 2)
    out = torch.nn.functional.grid_sample(texture[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0, :, 0].T


def _as_c2w(c2w) -> torch.Tensor:
    c2w = torch.as_tensor(c2w, dtype=torch.float32) if not isinstance(c2w, torch.Tensor) else c2w.float()
    if c2w.shape == (4, 4):
        c2w = c2w[None]
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise Zero123Error(f"c2w must be [4,4] or [B,4,4] camera-to-world matrices, got shape {tuple(c2w.shape)}")
    if not torch.isfinite(c2w).all():
        raise Zero123Error("c2w contains non-finite values")
    return c2w


def render_mesh(
    mesh,
    c2w,
    fov_deg: float,
    size: int,
    *,
    light_dir=None,
    ambient: float = 0.4,
    background: Optional[Sequence[float]] = None,
    samples: int = 1,
    near: float = 0.01,
    smooth_angle_deg: float = 30.0,
) -> dict:
    """Render ``mesh`` from each camera.

    Args:
        mesh: ``trimesh.Trimesh``, ``trimesh.Scene`` (each part keeps its material) or list of meshes, or a
            :class:`PreparedMesh` (from :func:`prepare_mesh`) to reuse across calls.
        c2w: camera-to-world ``[B,4,4]`` or ``[4,4]`` (OpenGL axes, see :mod:`zero123.camera`).
        fov_deg: vertical field of view, degrees (0 < fov < 180).
        size: image side in pixels.
        light_dir: world-space direction *towards* the light, ``[3]`` or ``[B,3]`` (normalised internally).
            ``None``: a head light from the camera, raised slightly (``back + 0.5 * up`` of each camera).
        ambient: ambient fraction in [0,1]; ``rgb = albedo * (ambient + (1 - ambient) * max(0, n.l))``.
        background: RGB in [0,1] to composite onto; ``None`` leaves rgb 0 where empty (straight alpha).
        samples: supersampling factor per axis (``samples**2`` samples per pixel); alpha is the covered fraction.
        near: near clipping distance (world units along -z).
        smooth_angle_deg: crease angle for smooth shading, see :func:`prepare_mesh`.

    Returns:
        dict with ``rgba`` ``[B,H,W,4]`` float32 in [0,1] (straight, not premultiplied, unless composited on
        ``background``), ``depth`` ``[B,H,W]`` float32 camera-space distance along -z (mean over covered
        samples; 0 where empty), ``mask`` ``[B,H,W]`` bool (coverage >= 0.5).
    """
    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise Zero123Error(f"image size must be a positive integer, got {size!r}")
    if not (0.0 < float(fov_deg) < 180.0):
        raise Zero123Error(f"fov_deg {fov_deg} is out of range (0, 180) degrees")
    if not (isinstance(samples, (int, np.integer)) and samples >= 1):
        raise Zero123Error(f"samples must be an integer >= 1, got {samples!r}")
    if not (0.0 <= float(ambient) <= 1.0):
        raise Zero123Error(f"ambient {ambient} is out of range [0, 1]")
    pm = mesh if isinstance(mesh, PreparedMesh) else prepare_mesh(mesh, smooth_angle_deg)
    c2w = _as_c2w(c2w)
    B = c2w.shape[0]
    hi = size * samples
    if light_dir is not None:
        ld = torch.as_tensor(np.asarray(light_dir, dtype=np.float32)) if not isinstance(light_dir, torch.Tensor) \
            else light_dir.float()
        ld = ld.reshape(-1, 3).expand(B, 3)
    else:
        ld = c2w[:, :3, 2] + 0.5 * c2w[:, :3, 1]
    ld = torch.nn.functional.normalize(ld, dim=-1)
    bg = None if background is None else torch.as_tensor(np.asarray(background, dtype=np.float32)).reshape(3)

    rgba_out, depth_out, mask_out = [], [], []
    for b in range(B):
        zbuf, fbuf, bary = _rasterize_view(pm, c2w[b], float(fov_deg), hi, near)
        cov = fbuf >= 0
        idx = torch.nonzero(cov).squeeze(1)
        fid, bc = fbuf[idx], bary[idx]
        # albedo: interpolated corner colours, replaced by texture samples on textured faces
        albedo = torch.einsum("nk,nkj->nj", bc, pm.corner_colors[fid])
        if pm.textures:
            ftex = pm.face_texture[fid]
            for k, tex in enumerate(pm.textures):
                sel = torch.nonzero(ftex == k).squeeze(1)
                if len(sel):
                    uv = torch.einsum("nk,nkj->nj", bc[sel], pm.corner_uv[fid[sel]])
                    albedo[sel] = _sample_texture(tex, uv) * pm.texture_factors[k]
        # shading
        n = torch.nn.functional.normalize(torch.einsum("nk,nkj->nj", bc, pm.corner_normals[fid]), dim=-1)
        view = c2w[b, :3, 3][None] - (torch.einsum("nk,nkj->nj", bc, pm.vertices[pm.faces[fid]]))
        flip = ((n * view).sum(-1, keepdim=True) < 0).float()
        n = n * (1 - 2 * flip)
        lam = (n * ld[b][None]).sum(-1, keepdim=True).clamp_min(0.0)
        rgb = (albedo * (ambient + (1 - ambient) * lam)).clamp(0, 1)

        img = torch.zeros(hi * hi, 3)
        img[idx] = rgb
        dep = torch.where(cov, zbuf, torch.zeros_like(zbuf))
        covf = cov.float()
        if samples > 1:
            def pool(x):  # [hi*hi, C] -> [size*size, C] mean over each samples x samples block
                C = x.shape[1]
                y = torch.nn.functional.avg_pool2d(x.T.reshape(1, C, hi, hi), samples)
                return y.reshape(C, size * size).T

            alpha = pool(covf[:, None])[:, 0]
            prem = pool(img)  # premultiplied (empty samples are 0)
            dsum = pool(dep[:, None])[:, 0]
            rgb_s = torch.where(alpha[:, None] > 0, prem / alpha.clamp_min(1e-8)[:, None], torch.zeros_like(prem))
            depth = torch.where(alpha > 0, dsum / alpha.clamp_min(1e-8), torch.zeros_like(dsum))
        else:
            alpha, rgb_s, depth = covf, img, dep
        if bg is not None:
            rgb_s = rgb_s * alpha[:, None] + bg[None] * (1 - alpha[:, None])
        rgba_out.append(torch.cat([rgb_s, alpha[:, None]], 1).view(size, size, 4))
        depth_out.append(depth.view(size, size))
        mask_out.append((alpha >= 0.5).view(size, size))
    return {"rgba": torch.stack(rgba_out).clamp(0, 1), "depth": torch.stack(depth_out), "mask": torch.stack(mask_out)}
