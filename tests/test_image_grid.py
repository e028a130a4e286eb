"""The one image grid (zero123.utils.images): layout, padding and the three image kinds it takes."""

import numpy as np
import pytest
import torch
from PIL import Image

from zero123.utils.images import as_uint8_rgb, image_grid, save_image_grid


def _solid(h, w, value):
    return np.full((h, w, 3), value, np.uint8)


def test_flat_list_is_tiled_by_columns_without_padding():
    ims = [_solid(4, 6, 10 * (i + 1)) for i in range(5)]
    grid = image_grid(ims, columns=2)
    assert grid.shape == (3 * 4, 2 * 6, 3)
    for i in range(5):
        r, c = divmod(i, 2)
        assert (grid[r * 4:(r + 1) * 4, c * 6:(c + 1) * 6] == 10 * (i + 1)).all()
    assert (grid[8:, 6:] == 255).all()  # the empty sixth cell is background
    assert image_grid(ims).shape == (4, 5 * 6, 3)  # default: one row up to 8


def test_rows_with_padding_and_mixed_sizes():
    grid = image_grid([[_solid(4, 4, 1), _solid(2, 3, 2)], [_solid(4, 4, 3)]], pad=2, background=7)
    assert grid.shape == (2 * 6 + 2, 2 * 6 + 2, 3)
    assert (grid[2:6, 2:6] == 1).all() and (grid[2:4, 8:11] == 2).all() and (grid[8:12, 2:6] == 3).all()
    assert (grid[4:6, 8:12] == 7).all() and (grid[:2] == 7).all() and (grid[8:12, 8:] == 7).all()


def test_pil_tensor_and_array_inputs_agree():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.zeros((5, 7), np.uint8)])
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1
    for im in (Image.fromarray(rgb), Image.fromarray(rgba), rgba, tensor):
        assert np.array_equal(as_uint8_rgb(im), rgb)
    assert np.array_equal(as_uint8_rgb(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1))
    with pytest.raises(ValueError, match="uint8"):
        as_uint8_rgb(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="at least one"):
        image_grid([])


def test_save_image_grid_writes_the_grid(tmp_path):
    rows = [[torch.ones(3, 4, 4), -torch.ones(3, 4, 4)]]
    path = save_image_grid(rows, tmp_path / "sub" / "g.png")
    got = np.asarray(Image.open(path))
    assert got.shape == (4, 8, 3) and (got[:, :4] == 255).all() and (got[:, 4:] == 0).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.png"]
