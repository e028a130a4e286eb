"""Renders in parts (zero123.rendering.chunked): the gradient of the losses back-propagated band by band equals
the whole render's; parts respect their sample budget and cover every pixel once."""

import pytest
import torch

from zero123.errors import Zero123Error
from zero123.fields import FieldConfig, NeRFField, OccupancyGrid
from zero123.guidance.losses import mask_loss, reference_rgb_loss
from zero123.representations.nerf import regularisers
from zero123.rendering import chunked
from zero123.rendering.cameras import orbit_cameras
from zero123.rendering.chunked import Part, opaque_ray_count, parts_by_samples, render_backward
from zero123.rendering.volume import RenderSettings, render, sample_images

H = 20
SETTINGS = RenderSettings(num_samples_per_ray=48)
WEIGHTS = dict(rgb=1.0, mask=2.0, orient=3.0, normal_smooth=5.0, normal_smooth_3d=0.5, opaque=1.0, sparsity=0.7)


def _field():
    torch.manual_seed(0)
    cfg = FieldConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, mlp_width=16, checkpoint_mlp=False,
                      encoding_backend="torch")
    field = NeRFField(cfg)
    with torch.no_grad():   # a non-trivial field: random hash features (the init is near zero)
        for p in field.encoding.parameters():
            p.uniform_(-1, 1)
    return field


def _targets(batch=1):
    g = torch.Generator().manual_seed(3)
    return torch.rand(batch, H, H, 3, generator=g), torch.rand(batch, H, H, 1, generator=g) > 0.5


def _image_terms(rgb):
    """A loss of the whole image that does not split by pixel (like SDS): a square of a mean and a product of
    mirrored pixels."""
    return {"sds": (rgb.mean() - 0.3) ** 2 * 10 + (rgb[..., 0] * rgb.flip(1)[..., 1]).mean()}


def _backward(field, cams, max_samples, *, background, with_sparsity=True, image_terms=None):
    gt, mask = _targets(len(cams))

    def whole_terms(out):
        return {"rgb": reference_rgb_loss(out.rgb, gt, mask, background), "mask": mask_loss(out.opacity, mask),
                **regularisers(out, with_sparsity=with_sparsity)}

    field.zero_grad(set_to_none=True)
    terms, stats = render_backward(field, cams, H, {**WEIGHTS, "sds": 2.0}, whole_terms=whole_terms,
                                   image_terms=image_terms, max_samples=max_samples,
                                   gt_rgb=gt, gt_mask=mask, background=background, with_sparsity=with_sparsity,
                                   settings=SETTINGS, generator=torch.Generator().manual_seed(1), with_normals=True,
                                   normal_perturb_std=0.01, shading="diffuse", ambient_ratio=0.4)
    return terms, stats, [p.grad.clone() for p in field.parameters()]


def _assert_same_gradient(g1, g2):
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_reference_view_in_row_bands_has_the_whole_render_gradient():
    field = _field()
    cam = orbit_cameras(5.0, 0.0, 3.8, 20.0)
    white = torch.ones(1, 3)
    t1, s1, g1 = _backward(field, cam, None, background=white)
    budget = s1["samples"] // 6
    t2, s2, g2 = _backward(field, cam, budget, background=white)
    assert s1["parts"] == 1 and s2["parts"] >= 6 and s1["samples"] == s2["samples"]
    assert set(t1) == set(t2) == set(WEIGHTS)
    for k in t1:
        torch.testing.assert_close(t2[k], t1[k], rtol=1e-5, atol=1e-8)
    assert all(float(t1[k]) > 0 for k in t1)      # every term is exercised
    _assert_same_gradient(g1, g2)


def test_without_the_border_row_the_band_gradient_differs(monkeypatch):
    """The overlap row matters: bands that do not render the row above lose the border differences."""
    field = _field()
    cam = orbit_cameras(5.0, 0.0, 3.8, 20.0)
    white = torch.ones(1, 3)
    _, s1, g1 = _backward(field, cam, None, background=white)
    monkeypatch.setattr(Part, "render_rows", property(lambda self: self.rows))
    monkeypatch.setattr(Part, "overlap", property(lambda self: 0))
    t2, _, g2 = _backward(field, cam, s1["samples"] // 6, background=white)
    with pytest.raises(AssertionError):
        _assert_same_gradient(g1, g2)


def test_random_view_batch_in_parts_has_the_whole_batch_gradient():
    """Views split in bands, random backgrounds, sparsity on, and a whole-image term (SDS-like) whose
    gradient w.r.t. the image is back-propagated part by part."""
    field = _field()
    cams = orbit_cameras(torch.tensor([5.0, 30.0, -5.0]), torch.tensor([0.0, 120.0, -100.0]),
                         torch.full((3,), 3.8), torch.full((3,), 20.0))
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.9], [0.0, 0.3, 0.1]])
    t1, s1, g1 = _backward(field, cams, None, background=bg, image_terms=_image_terms)
    t2, s2, g2 = _backward(field, cams, s1["samples"] // 4, background=bg, image_terms=_image_terms)
    assert s2["parts"] >= 4 and "sds" in t2
    for k in t1:
        torch.testing.assert_close(t2[k], t1[k], rtol=1e-5, atol=1e-8)
    _assert_same_gradient(g1, g2)


def test_parts_render_the_whole_render_values_and_cover_each_pixel_once():
    field = _field()
    cams = orbit_cameras(torch.tensor([5.0, 40.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 3.8),
                         torch.full((2,), 20.0))
    occ = OccupancyGrid(field.radius, 16, 1, 0.0, 0.01)
    occ.update(field.density, SETTINGS.step_size(field.radius), generator=torch.Generator().manual_seed(0))
    kw = dict(occupancy=occ, settings=SETTINGS, with_normals=True, normal_perturb_std=0.01)
    with torch.no_grad():
        whole = render(field, cams, H, generator=torch.Generator().manual_seed(5), **kw)
        samples = sample_images(field, cams, H, occupancy=occ, settings=SETTINGS, normal_perturb_std=0.01,
                                generator=torch.Generator().manual_seed(5))
        assert samples.num_samples == whole.stats["samples"]
        # whole-render opacity > 0 count, as the orient term normalises
        assert opaque_ray_count(field, cams, samples) == int((whole.opacity > 0).sum()) > 0
        budget = samples.num_samples // 7
        parts = parts_by_samples(samples, budget)
        per_row = torch.bincount(samples.ray_indices // H, minlength=2 * H).view(2, H)
        covered = torch.zeros(2, H, dtype=torch.long)
        n = 0
        for p in parts:
            covered[p.views, p.rows] += 1
            rows = p.render_rows
            held = int(per_row[p.views, rows].sum())
            assert held <= budget or p.rows.stop - p.rows.start == 1
            out = render(field, cams, H, rows=rows, views=p.views, samples=samples, **kw)
            n += int(per_row[p.views, p.rows].sum())
            for name in ("rgb", "opacity", "depth", "comp_normal"):
                torch.testing.assert_close(getattr(out, name), getattr(whole, name)[p.views, rows],
                                           rtol=1e-6, atol=1e-6)
        assert (covered == 1).all() and n == samples.num_samples
        assert len(parts_by_samples(samples, None)) == 1
        assert parts_by_samples(samples, 10 ** 9) == [Part(slice(0, 2), slice(0, H))]
        per_view = per_row.sum(1)
        assert parts_by_samples(samples, int(per_view.max())) == [Part(slice(0, 1), slice(0, H)),
                                                                  Part(slice(1, 2), slice(0, H))]
    with pytest.raises(Zero123Error, match="samples are of"):
        render(field, cams, H + 1, rows=slice(0, 2), samples=samples, **kw)
    with pytest.raises(Zero123Error, match="non-empty slice"):
        render(field, cams, H, rows=slice(5, 5), samples=samples, **kw)


def test_orient_in_parts_needs_the_whole_count():
    field = _field()
    cam = orbit_cameras(5.0, 0.0, 3.8, 20.0)
    samples = sample_images(field, cam, H, settings=SETTINGS)
    out = render(field, cam, H, rows=slice(0, 4), samples=samples, settings=SETTINGS, with_normals=True)
    whole = chunked.WholeCounts(1, H, H, samples.num_samples, None)
    with pytest.raises(Zero123Error, match="opaque_rays"):
        chunked.part_terms(out, Part(slice(0, 1), slice(0, 4)), whole)
