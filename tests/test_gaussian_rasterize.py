"""The dense PyTorch Gaussian rasteriser against an independent per-pixel loop, gradcheck, and its input checks."""

import math

import pytest
import torch

from zero123.errors import Zero123Error
from zero123.representations.gaussians.rasterize import bin_gaussians, rasterize_gaussians


def make_scene(b=2, n=40, height=32, width=32, c=3, seed=0, dtype=torch.float32):
    """Random projected Gaussians: some off-screen, ~10% culled, a bright cluster in the middle (so that the 0.99
    clamp and the T < 1e-4 stop happen), anisotropic and rotated, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float64)
    means = (torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15) * size
    means[:, : n // 3] = size / 2 + torch.randn(b, n // 3, 2, generator=g, dtype=torch.float64) * 2
    sig = 0.8 + torch.rand(b, n, 2, generator=g, dtype=torch.float64) * 5
    th = torch.rand(b, n, generator=g, dtype=torch.float64) * math.pi
    cos, sin = torch.cos(th), torch.sin(th)
    # inverse covariance R diag(1/s^2) R^T
    ia, ib = 1 / sig[..., 0] ** 2, 1 / sig[..., 1] ** 2
    conics = torch.stack([cos * cos * ia + sin * sin * ib, cos * sin * (ia - ib), sin * sin * ia + cos * cos * ib], -1)
    radii = torch.ceil(3 * sig.max(-1).values)
    radii[torch.rand(b, n, generator=g) < 0.1] = 0
    depths = torch.rand(b, n, generator=g, dtype=torch.float64) * 4 + 1
    opac = 0.05 + 0.9 * torch.rand(b, n, generator=g, dtype=torch.float64)
    opac[:, : n // 6] = 0.997
    colors = torch.rand(b, n, c, generator=g, dtype=torch.float64)
    bg = torch.rand(b, c, generator=g, dtype=torch.float64)
    return dict(means2d=means.to(dtype), conics=conics.to(dtype), depths=depths.to(dtype), opacities=opac.to(dtype),
                colors=colors.to(dtype), background=bg.to(dtype), height=height, width=width, radii=radii.long())


def loop_reference(s):
    """3DGS's per-pixel loop written out in Python floats: image [B,H,W,C], alpha [B,H,W], stopped-pixel count."""
    b, n, c = s["colors"].shape
    m, q, d, o, col, bg, r = (s[k].double().tolist() for k in
                              ("means2d", "conics", "depths", "opacities", "colors", "background", "radii"))
    image = torch.zeros(b, s["height"], s["width"], c, dtype=torch.float64)
    alpha = torch.zeros(b, s["height"], s["width"], dtype=torch.float64)
    stopped = 0
    for v in range(b):
        order = sorted(range(n), key=lambda i: d[v][i])
        for y in range(s["height"]):
            for x in range(s["width"]):
                t, acc = 1.0, [0.0] * c
                for i in order:
                    dx, dy = x + 0.5 - m[v][i][0], y + 0.5 - m[v][i][1]
                    if r[v][i] <= 0 or abs(dx) > r[v][i] or abs(dy) > r[v][i]:
                        continue
                    power = -0.5 * (q[v][i][0] * dx * dx + q[v][i][2] * dy * dy) - q[v][i][1] * dx * dy
                    if power > 0:
                        continue
                    a = min(0.99, o[v][i] * math.exp(power))
                    if a < 1 / 255:
                        continue
                    if t * (1 - a) < 1e-4:
                        stopped += 1
                        break
                    acc = [acc[k] + col[v][i][k] * a * t for k in range(c)]
                    t *= 1 - a
                image[v, y, x] = torch.tensor([acc[k] + t * bg[v][k] for k in range(c)], dtype=torch.float64)
                alpha[v, y, x] = 1 - t
    return image, alpha, stopped


def test_dense_matches_per_pixel_loop():
    s = make_scene(b=2, n=30, height=14, width=19, c=3, dtype=torch.float64)   # non-square: x and y not swapped
    ref_img, ref_alpha, stopped = loop_reference(s)
    assert stopped > 0 and (s["radii"] == 0).any()                             # the stop and culling happen
    for chunk in (1 << 23, 100):                                                # one chunk; many partial chunks
        img, alpha = rasterize_gaussians(**s, backend="torch", chunk_elements=chunk)
        assert img.shape == (2, 14, 19, 3) and alpha.shape == (2, 14, 19, 1)
        torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-12)
        torch.testing.assert_close(alpha[..., 0], ref_alpha, rtol=0, atol=1e-12)
    assert (alpha > 0.99).any() and (alpha < 0.9).any()


def test_dense_gradcheck_float64():
    s = make_scene(b=2, n=5, height=6, width=5, c=2, seed=3, dtype=torch.float64)
    s["means2d"] = s["means2d"] * 0.2 + 2.5                     # all on screen,
    s["radii"] = torch.full_like(s["radii"], 20)                 # footprints cover the image,
    s["opacities"] = s["opacities"].clamp(0.2, 0.8)              # no clamp kink within eps
    s["conics"] = s["conics"] * 0.3                              # wide: a >= 1/255 everywhere
    names = ("means2d", "conics", "opacities", "colors", "background")
    inputs = [s[k].clone().requires_grad_(True) for k in names]

    def fn(*args):
        kw = dict(s, **dict(zip(names, args)))
        img, alpha = rasterize_gaussians(**kw, backend="torch", chunk_elements=100, checkpoint=True)
        return img, alpha

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)   # random projections


def test_dense_culled_and_empty():
    s = make_scene(b=1, n=6, height=8, width=8, c=3)
    s["radii"][:, 1:] = 0
    s["means2d"][:, 2:4] = float("nan")                 # what a projection may leave for culled Gaussians
    s["conics"][:, 4] = float("inf")
    ref = rasterize_gaussians(**dict(s, means2d=s["means2d"][:, :1], conics=s["conics"][:, :1],
                                     depths=s["depths"][:, :1], opacities=s["opacities"][:, :1],
                                     colors=s["colors"][:, :1], radii=s["radii"][:, :1]), backend="torch")
    for k in ("means2d", "conics", "colors"):
        s[k].requires_grad_(True)
    img, alpha = rasterize_gaussians(**s, backend="torch")
    torch.testing.assert_close(img, ref[0], rtol=0, atol=0)
    img.sum().backward()
    for k in ("means2d", "conics", "colors"):
        assert torch.isfinite(s[k].grad).all() and (s[k].grad[:, 1:] == 0).all() and (s[k].grad[:, 0] != 0).any()
    s["radii"][:] = 0
    img, alpha = rasterize_gaussians(**s, backend="torch")
    torch.testing.assert_close(img, s["background"][:, None, None].expand(1, 8, 8, 3))
    assert (alpha == 0).all()
    e = make_scene(b=2, n=0, height=4, width=5, c=4)
    img, alpha = rasterize_gaussians(**e, backend="auto")
    assert img.shape == (2, 4, 5, 4) and (img == e["background"][:, None, None]).all() and (alpha == 0).all()


def test_bin_gaussians_covers_every_footprint_in_depth_order():
    s = make_scene(b=2, n=40, height=40, width=36, c=3)
    offsets, ids = bin_gaussians(s["means2d"], s["depths"], s["radii"], 40, 36)
    ntx, nty = 3, 3
    assert offsets.shape == (2 * ntx * nty + 1,) and int(offsets[-1]) == ids.shape[0]
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(36) + 0.5, indexing="ij")
    flat_depth = s["depths"].reshape(-1)
    for v in range(2):
        for ty in range(nty):
            for tx in range(ntx):
                t = v * ntx * nty + ty * ntx + tx
                lst = ids[offsets[t]:offsets[t + 1]].long()
                assert (lst // 40 == v).all()
                assert (flat_depth[lst].diff() >= 0).all()
                px = xs[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16].reshape(-1, 1)
                py = ys[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16].reshape(-1, 1)
                r = s["radii"][v].float()
                hit = ((px - s["means2d"][v, :, 0]).abs() <= r) & ((py - s["means2d"][v, :, 1]).abs() <= r) & (r > 0)
                need = set((torch.nonzero(hit.any(0))[:, 0] + v * 40).tolist())
                assert need <= set(lst.tolist())
                assert len(lst) <= len(need) + 8          # conservative, not the whole view


@pytest.mark.parametrize("change, message", [
    (dict(colors=torch.zeros(2, 5, 3)), "colors must be"),
    (dict(colors=torch.zeros(2, 6)), "colors must be"),
    (dict(colors=torch.zeros(2, 6, 0)), "at least one channel"),
    (dict(background=torch.zeros(2, 4)), "background must be"),
    (dict(means2d=torch.zeros(2, 6, 3)), "means2d must be"),
    (dict(depths=torch.zeros(6)), "depths must be"),
    (dict(height=0), "positive integer image size"),
    (dict(backend="cuda"), "unknown Gaussian rasteriser backend"),
])
def test_bad_inputs_are_one_line_errors(change, message):
    s = dict(make_scene(b=2, n=6, height=8, width=8, c=3), backend="torch")
    s.update(change)
    with pytest.raises(Zero123Error, match=message):
        rasterize_gaussians(**s)


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(Zero123Error, match="needs CUDA tensors"):
        rasterize_gaussians(**make_scene(b=1, n=3, height=4, width=4), backend="triton")


def test_dense_checkpointing_bounds_saved_memory_and_keeps_gradients():
    s = make_scene(b=2, n=20, height=16, width=16, c=3)
    dense_entries = 2 * 16 * 16 * 20
    results = {}
    for ckpt in (False, True):
        inputs = {k: s[k].clone().requires_grad_(True) for k in ("means2d", "conics", "opacities", "colors")}
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            image, alpha = rasterize_gaussians(**dict(s, **inputs), backend="torch", chunk_elements=2560,
                                               checkpoint=ckpt, cull=False)        # 4 chunks
        (image.square().sum() + alpha.sum()).backward()
        results[ckpt] = (sum(saved), [inputs[k].grad for k in inputs])
    assert results[False][0] > 3 * dense_entries           # autograd keeps every [B, P, N] term ...
    assert results[True][0] < 0.3 * dense_entries           # ... checkpointing: inputs, [B, P, C] outputs
    for plain, ckpt in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(ckpt, plain, rtol=1e-6, atol=1e-7)


def test_dense_culling_per_chunk_is_exact():
    s = make_scene(b=2, n=40, height=24, width=20, c=3, dtype=torch.float64)   # only summation order differs
    results = {}
    for cull in (False, True):
        inputs = {k: s[k].clone().requires_grad_(True) for k in ("means2d", "conics", "opacities", "colors")}
        image, alpha = rasterize_gaussians(**dict(s, **inputs), backend="torch", chunk_elements=6400, cull=cull)
        (image.square().sum() + alpha.sum()).backward()
        results[cull] = [image, alpha] + [inputs[k].grad for k in inputs]
    for plain, culled in zip(results[False], results[True]):
        torch.testing.assert_close(culled, plain, rtol=1e-12, atol=1e-14)
