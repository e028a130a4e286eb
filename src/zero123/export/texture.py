"""Texture baking: xatlas UV atlas + per-texel colour queries of the field's albedo.

``bake_texture(mesh, color_fn, size)`` parametrises the mesh with xatlas, rasterises every triangle into the
``size x size`` atlas (texel centres, barycentric coordinates in UV space), maps each covered texel to its 3D
surface point, asks ``color_fn`` (world points [N,3] -> RGB [N,3] in [0,1]) for its colour and pads the charts by
``padding`` texels (so bilinear lookups at seams do not bleed the empty background in).

UV convention (OBJ / glTF via trimesh): ``u`` to the right, ``v`` up; texel ``(row i, col j)`` has centre
``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Zero123Error


def uv_parametrize(vertices: np.ndarray, faces: np.ndarray):
    """xatlas: returns ``(vmapping [V'] original vertex of each new vertex, faces [F,3], uvs [V',2] in [0,1])``."""
    import xatlas

    if len(faces) == 0:
        raise Zero123Error("cannot build a UV atlas for an empty mesh")
    vmapping, indices, uvs = xatlas.parametrize(np.ascontiguousarray(vertices, dtype=np.float32),
                                                np.ascontiguousarray(faces, dtype=np.uint32))
    return vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float32)


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int, chunk: int = 1 << 22):
    """Texels covered by each UV triangle (``uvs`` [V,2] in [0,1], ``faces`` [F,3]), through
    :func:`zero123.rendering.coverage.covered_points` at the texel centres.

    Returns ``(texel_index [M] = row * size + col, face [M], barycentric [M,3] float32)`` for every covered texel
    centre.
    """
    from ..rendering.coverage import covered_points

    uv = torch.as_tensor(uvs, dtype=torch.float64)
    f = torch.as_tensor(faces, dtype=torch.long)
    px = torch.stack([uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5], -1)           # (col, row) coords
    cov = covered_points(px[f], size, size, chunk=chunk)
    return cov.y * size + cov.x, cov.tri, cov.bary.float()


def dilate(texture: torch.Tensor, valid: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow the valid region of ``texture`` [H,W,3] by averaging valid 3x3 neighbours, ``iterations`` times."""
    img = (texture * valid[..., None]).permute(2, 0, 1)[None]
    m = valid[None, None].float()
    k = torch.ones(1, 1, 3, 3)
    for _ in range(iterations):
        s = F.conv2d(img, k.expand(3, 1, 3, 3), padding=1, groups=3)
        c = F.conv2d(m, k, padding=1)
        new = (c > 0) & (m == 0)
        img = torch.where(new, s / c.clamp_min(1), img)
        m = torch.where(new, torch.ones_like(m), m)
    return img[0].permute(1, 2, 0), m[0, 0] > 0


def bake_texture(mesh, color_fn, size: int = 1024, padding: int = 4, chunk: int = 1 << 18):
    """UV-unwrap ``mesh`` and bake ``color_fn`` into a texture.

    Returns a new ``trimesh.Trimesh`` with ``TextureVisuals`` (uv + PIL image, vertices split along UV seams).
    """
    import trimesh
    from PIL import Image

    vmap, faces, uvs = uv_parametrize(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    verts = np.asarray(mesh.vertices)[vmap]
    texel, fid, bary = rasterize_uv(uvs, faces, size)
    v = torch.as_tensor(verts, dtype=torch.float32)
    f = torch.as_tensor(faces, dtype=torch.long)
    pts = torch.einsum("nk,nkj->nj", bary, v[f[fid]])
    cols = []
    with torch.no_grad():
        for s in range(0, pts.shape[0], chunk):
            cols.append(color_fn(pts[s:s + chunk]).float().cpu().clamp(0, 1))
    color = torch.cat(cols) if cols else torch.zeros(0, 3)
    tex = torch.zeros(size * size, 3)
    valid = torch.zeros(size * size, dtype=torch.bool)
    tex[texel] = color
    valid[texel] = True
    tex, valid = dilate(tex.view(size, size, 3), valid.view(size, size), padding)
    fill = color.mean(0) if color.numel() else torch.full((3,), 0.5)
    tex = torch.where(valid[..., None], tex, fill)
    image = Image.fromarray((tex.numpy() * 255).round().clip(0, 255).astype(np.uint8))
    material = trimesh.visual.material.SimpleMaterial(image=image, diffuse=[255, 255, 255, 255])
    visual = trimesh.visual.TextureVisuals(uv=uvs, image=image, material=material)
    return trimesh.Trimesh(verts, faces, visual=visual, process=False)


def vertex_colors(mesh, color_fn, chunk: int = 1 << 18) -> np.ndarray:
    """``color_fn`` at the mesh vertices as uint8 RGBA ``[V,4]``."""
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    with torch.no_grad():
        c = torch.cat([color_fn(v[s:s + chunk]).float().cpu() for s in range(0, len(v), chunk)]) if len(v) \
            else torch.zeros(0, 3)
    rgba = np.concatenate([(c.clamp(0, 1).numpy() * 255).round(), np.full((len(v), 1), 255.0)], 1)
    return rgba.astype(np.uint8)
