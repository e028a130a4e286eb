"""Hash-grid encoding, NeRF field and occupancy grid: values against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from zero123.fields import FieldConfig, HashGridEncoding, NeRFField, OccupancyGrid, level_layout

SMALL = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)


def reference_encoding(enc: HashGridEncoding, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Straightforward per-level, per-corner implementation (Python loops over levels and corners), written
    from the Instant-NGP description; differentiable in both ``x`` and ``table``."""
    scales, res, sizes, dense = enc._layout_args
    primes = (1, 2654435761, 805459861)
    feats, offset = [], 0
    for level in range(len(scales)):
        pos = x * scales[level] + 0.5
        base = torch.floor(pos.detach())
        frac = pos - base
        base = base.long()
        acc = 0
        for c in range(8):
            bits = [(c >> k) & 1 for k in range(3)]
            corner = base + torch.tensor(bits)
            if dense[level]:
                corner = corner.clamp(max=res[level] - 1)
                idx = corner[:, 0] + corner[:, 1] * res[level] + corner[:, 2] * res[level] ** 2
            else:
                idx = (corner[:, 0] * primes[0]) ^ (corner[:, 1] * primes[1]) ^ (corner[:, 2] * primes[2])
                idx = idx % sizes[level]
            w = 1.0
            for k in range(3):
                w = w * (frac[:, k] if bits[k] else 1 - frac[:, k])
            acc = acc + w[:, None] * table[offset + idx]
        feats.append(acc)
        offset += sizes[level]
    return torch.cat(feats, 1)


def test_level_layout_matches_tiny_cuda_nn_recipe():
    scales, res, sizes, dense = level_layout(16, 19, 16, 1.447269237440378)
    assert res[0] == 16 and res[-1] == 4096  # "max resolution 4096" of the recipe
    assert sizes[-1] == 2 ** 19 and all(s <= 2 ** 19 for s in sizes)
    # coarse levels are dense while res^3 fits in the table, the rest hashed
    assert dense == [r ** 3 <= 2 ** 19 for r in res]
    assert sum(dense) == 5
    enc = HashGridEncoding(16, 2, 19, 16, 1.447269237440378)
    assert enc.table.shape == (sum(sizes), 2) and enc.n_output_dims == 32
    assert enc.table.abs().max() <= 1e-4  # tiny-cuda-nn init U(-1e-4, 1e-4)


RECIPE = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
              per_level_scale=1.447269237440378)


@pytest.mark.parametrize("kw", [SMALL, RECIPE], ids=["small", "recipe"])
def test_encoding_matches_reference_values_and_table_gradient(kw):
    """Features and table gradient against the int64 loop reference. The recipe's grid has coordinates up to 4096,
    so its hash products pass 2^32: the int32 corner indices (wrapping products) must still agree."""
    torch.manual_seed(0)
    enc = HashGridEncoding(**kw)
    with torch.no_grad():
        enc.table.uniform_(-1, 1)
    x = torch.cat([torch.rand(300, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.9999, 0.5, 1.0]])])
    feat, _ = enc(x)
    table = enc.table.detach().clone().requires_grad_(True)
    ref = reference_encoding(enc, x, table)
    torch.testing.assert_close(feat, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(feat)
    (feat * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(enc.table.grad, table.grad, atol=1e-5, rtol=1e-5)


def test_encoding_jacobian_matches_autograd_and_its_table_gradient():
    torch.manual_seed(1)
    enc = HashGridEncoding(**SMALL)
    with torch.no_grad():
        enc.table.uniform_(-1, 1)
    x = torch.rand(64, 3)
    feat, jac = enc(x, with_jacobian=True)
    assert jac.shape == (64, feat.shape[1], 3)
    xr = x.clone().requires_grad_(True)
    table = enc.table.detach().clone().requires_grad_(True)
    ref = reference_encoding(enc, xr, table)
    ref_jac = torch.stack([torch.autograd.grad(ref[:, j].sum(), xr, create_graph=True)[0]
                           for j in range(ref.shape[1])], 1)                       # [N, D, 3]
    torch.testing.assert_close(jac, ref_jac, atol=1e-4, rtol=1e-4)
    # gradient of a loss on the Jacobian w.r.t. the table (what normal losses need)
    g = torch.randn_like(jac)
    (jac * g).sum().backward()
    (ref_jac * g).sum().backward()
    torch.testing.assert_close(enc.table.grad, table.grad, atol=1e-4, rtol=1e-4)


def test_initial_density_is_the_magic3d_blob():
    f = NeRFField(FieldConfig(**{k: v for k, v in SMALL.items()}, mlp_width=16))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, -1.0]])
    expected = F.softplus(10.0 * (1 - x.norm(dim=-1) / 0.5))
    # the MLP output is ~0 at init (table entries are ~1e-4), so the density is the bias
    torch.testing.assert_close(f.density(x), expected, atol=1e-3, rtol=1e-3)
    out = f(x[1:], with_normal=True)
    torch.testing.assert_close(out.normal, F.normalize(x[1:], dim=-1), atol=1e-3, rtol=0)  # outward
    assert ((out.albedo > 0) & (out.albedo < 1)).all()


def test_analytic_normals_match_autograd_and_finite_differences():
    torch.manual_seed(2)
    cfg = FieldConfig(**SMALL, mlp_width=16, mlp_hidden_layers=2, density_blob_scale=0.0)
    f = NeRFField(cfg)
    with torch.no_grad():
        f.encoding.table.uniform_(-1, 1)
    x = (torch.rand(200, 3) - 0.5) * 2.0
    n = f.normal(x)
    # independent: autograd through the reference encoding and the MLP
    xr = x.clone().requires_grad_(True)
    enc = reference_encoding(f.encoding, (xr + 2.0) / 4.0, f.encoding.table)
    h = enc
    for i, lin in enumerate(f.density_net):
        h = lin(h)
        if i < len(f.density_net) - 1:
            h = torch.relu(h)
    raw = h[:, 0] + f.density_bias(xr)
    n_ref = -F.normalize(torch.autograd.grad(raw.sum(), xr)[0], dim=-1)
    torch.testing.assert_close(n, n_ref, atol=1e-4, rtol=1e-4)
    # finite differences agree on a smooth field (the blob alone)
    g = NeRFField(FieldConfig(**SMALL, mlp_width=8, normal_type="finite_difference"))
    pts = torch.tensor([[0.3, 0.1, -0.2], [-0.1, 0.4, 0.2]])
    torch.testing.assert_close(g.normal(pts), F.normalize(pts, dim=-1), atol=1e-3, rtol=0)


def test_normal_losses_backpropagate_into_the_table():
    torch.manual_seed(3)
    f = NeRFField(FieldConfig(**SMALL, mlp_width=16))
    x = (torch.rand(100, 3) - 0.5)
    out = f(x, with_normal=True)
    (out.normal[:, 2].sum() + out.albedo.sum()).backward()
    assert torch.isfinite(f.encoding.table.grad).all() and f.encoding.table.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in f.density_net.parameters())


def test_field_rejects_bad_config():
    from zero123.errors import Zero123Error

    with pytest.raises(Zero123Error):
        NeRFField(FieldConfig(normal_type="pred"))
    with pytest.raises(Zero123Error):
        NeRFField(FieldConfig(radius=0))


def test_occupancy_grid_marks_the_blob_and_skips_empty_space():
    f = NeRFField(FieldConfig(**SMALL, mlp_width=8))
    occ = OccupancyGrid(radius=2.0, resolution=16, update_every=4)
    step = 1.732 * 4 / 512
    occ.update(f.density, step, generator=torch.Generator().manual_seed(0))
    # occupied where density * step > 0.01, i.e. softplus(10 (1 - r / 0.5)) > 0.74: r < ~0.5
    assert occ.query(torch.tensor([[0.0, 0.0, 0.0]])).item()
    assert not occ.query(torch.tensor([[1.5, 1.5, 1.5], [0.0, 0.0, 1.2], [3.0, 0.0, 0.0]])).any()
    lo, hi = occ.occupied_bounds()
    assert (lo >= -0.75).all() and (hi <= 0.75).all() and (lo < 0).all() and (hi > 0).all()
    # maybe_update only fires every `update_every` steps
    occ.fill(True)
    assert not occ.maybe_update(3, f.density, step)
    assert occ.binary.all()
    assert occ.maybe_update(4, f.density, step)
    assert not occ.binary.all()
    # cell centres round-trip through cell_index
    c = occ.cell_centers()
    assert torch.equal(occ.cell_index(c), torch.arange(16 ** 3))
    assert math.isclose(occ.cell_size(), 0.25)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_mlps_keep_values_and_gradients_close_to_float32(dtype):
    """``mlp_dtype: bfloat16`` / ``float16`` (autocast of the MLPs and their Jacobian): float32 outputs within bf16 rounding of
    the float32 field's (measured: <= 2.4e-4 raw density, normals within 6 degrees in bf16), parameter gradients of a loss on density, albedo and normals pointing the same way, and
    not bitwise equal (the MLPs did run in half precision)."""
    torch.manual_seed(0)
    cfg = dict(radius=1.0, n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
               per_level_scale=2.0, mlp_width=32, mlp_hidden_layers=2, density_blob_scale=2.0)
    f32 = NeRFField(FieldConfig(**cfg))
    with torch.no_grad():
        f32.encoding.table.uniform_(-0.5, 0.5)
    f16 = NeRFField(FieldConfig(**cfg, mlp_dtype=dtype))
    f16.load_state_dict(f32.state_dict())
    x = (torch.rand(2000, 3) * 2 - 1) * 0.9
    outs = []
    for field in (f32, f16):
        out = field(x, with_albedo=True, with_normal=True)
        loss = out.density.mean() + (out.albedo ** 2).mean() + out.normal[:, 2].mean()
        loss.backward()
        outs.append((out, {k: p.grad for k, p in field.named_parameters()}))
    (a, ga), (b, gb) = outs
    assert b.density.dtype == b.albedo.dtype == b.normal.dtype == torch.float32
    torch.testing.assert_close(b.raw_density, a.raw_density, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(b.albedo, a.albedo, atol=2e-3, rtol=0.0)
    assert (b.normal * a.normal).sum(-1).min() > 0.99                                   # within ~8 degrees
    assert not torch.equal(b.raw_density, a.raw_density)
    for k in ga:
        cos = F.cosine_similarity(ga[k].flatten(), gb[k].flatten(), dim=0)
        assert cos > 0.995, (k, float(cos))
    with pytest.raises(Exception, match="mlp_dtype"):
        NeRFField(FieldConfig(mlp_dtype="float8"))


def test_table_gradient_is_the_same_with_corners_kept_or_recomputed(monkeypatch):
    """On a CPU the forward keeps its corner indices for backward (under KEEP_CORNERS_BYTES); recomputing them,
    as a large batch does, gives the same features, Jacobian and table gradient."""
    from zero123.fields import hash_grid

    torch.manual_seed(2)
    enc = HashGridEncoding(**SMALL, chunk=128)   # several chunks
    with torch.no_grad():
        enc.table.uniform_(-1, 1)
    x = torch.rand(500, 3)
    g, gj = torch.randn(500, enc.n_output_dims), torch.randn(500, enc.n_output_dims, 3)
    grads = []
    for budget in (hash_grid.KEEP_CORNERS_BYTES, 0):
        monkeypatch.setattr(hash_grid, "KEEP_CORNERS_BYTES", budget)
        enc.table.grad = None
        feat, jac = enc(x, with_jacobian=True)
        ((feat * g).sum() + (jac * gj).sum()).backward()
        grads.append((feat.detach(), jac.detach(), enc.table.grad.clone()))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
