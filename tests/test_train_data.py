"""Training data: view pairs, camera embeddings from stored matrices, splits, the draw stream."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from zero123.camera import camera_embedding, embedding_from_rt
from zero123.errors import Zero123Error
from zero123.training.dataset import DrawSampler, DrawStream, ViewPairDataset
from zero123.training.synthetic import synthetic_cameras, write_synthetic_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("views"), num_objects=5, views_per_object=5,
                                   image_size=32, val_objects=2, seed=3)


@pytest.mark.parametrize("variant", ["zero123", "stable_zero123"])
def test_camera_embedding_matches_stored_matrices_and_true_angles(data_root, variant):
    ds = ViewPairDataset(data_root, "train", variant=variant, seed=0)
    cams = synthetic_cameras(data_root)
    seen = set()
    for draw in range(12):
        idx = draw % len(ds)
        item = ds[(draw, idx)]
        oid = ds.objects[idx].id
        tv, cv = int(item["target_view"]), int(item["cond_view"])
        seen.add((tv, cv))
        assert tv != cv
        # 1) exactly what zero123.camera computes from the two stored 3x4 RT files
        rt_t = torch.from_numpy(np.load(data_root / oid / f"{tv:03d}.npy"))
        rt_c = torch.from_numpy(np.load(data_root / oid / f"{cv:03d}.npy"))
        assert torch.equal(item["camera"], embedding_from_rt(variant, rt_t, rt_c))
        # 2) independently: from the angles the views were generated with (no matrices involved)
        (te, ta, tr), (ie, ia, ir) = cams[oid][tv], cams[oid][cv]
        expected = camera_embedding(variant, te, ta, tr, ie, ia, ir)
        torch.testing.assert_close(item["camera"], expected, atol=2e-5, rtol=0)
        d_polar = math.radians((90 - te) - (90 - ie))
        assert item["camera"][0].item() == pytest.approx(d_polar, abs=2e-5)
        assert item["camera"][1].item() == pytest.approx(math.sin(math.radians(ta - ia)), abs=2e-5)
        fourth = tr - ir if variant == "zero123" else math.radians(90 - ie)
        assert item["camera"][3].item() == pytest.approx(fourth, abs=2e-5)
    assert len(seen) > 4  # different draws pick different pairs


def test_images_are_composited_on_white_and_resized(data_root):
    ds = ViewPairDataset(data_root, "train", image_size=32)
    item = ds[(0, 0)]
    oid, tv = ds.objects[0].id, int(item["target_view"])
    rgba = np.asarray(Image.open(data_root / oid / f"{tv:03d}.png").convert("RGBA")).astype(np.float64) / 255
    expected = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # over white
    got = (item["target"].permute(1, 2, 0).double() + 1) / 2
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert (rgba[..., 3] == 0).any() and torch.all(item["target"][:, rgba[..., 3] == 0] == 1.0)
    small = ViewPairDataset(data_root, "train", image_size=16)[(0, 0)]
    assert small["target"].shape == (3, 16, 16) and small["cond"].shape == (3, 16, 16)
    assert small["target"].min() >= -1 and small["target"].max() <= 1
    # a downscale keeps the mean colour (antialiased), within rounding
    assert abs(small["target"].mean().item() - item["target"].mean().item()) < 0.03


def test_split_filtering_follows_the_manifest(data_root):
    manifest = json.loads((data_root / "manifest.json").read_text())
    by_split = {s: [o["id"] for o in manifest["objects"] if o["split"] == s] for s in ("train", "val")}
    assert [o.id for o in ViewPairDataset(data_root, "train").objects] == by_split["train"]
    assert [o.id for o in ViewPairDataset(data_root, "val").objects] == by_split["val"]
    assert len(ViewPairDataset(data_root, "test")) == 0
    assert [o.id for o in ViewPairDataset(data_root, "train", max_objects=2).objects] == by_split["train"][:2]
    val = ViewPairDataset(data_root, "val")
    assert all(val.objects[int(val[(d, d % 2)]["object_index"])].split == "val" for d in range(4))


def test_pair_choice_is_a_function_of_seed_and_draw(data_root):
    a = ViewPairDataset(data_root, "train", seed=0)
    b = ViewPairDataset(data_root, "train", seed=0)
    c = ViewPairDataset(data_root, "train", seed=1)
    pairs_a = [a.view_pair(d, 0) for d in range(50)]
    assert pairs_a == [b.view_pair(d, 0) for d in range(50)]
    assert pairs_a != [c.view_pair(d, 0) for d in range(50)]
    assert all(t != v for t, v in pairs_a)
    counts = np.zeros((5, 5))
    for d in range(2000):
        counts[a.view_pair(d, 0)] += 1
    off = counts[~np.eye(5, dtype=bool)]
    assert off.min() > 0.5 * 2000 / 20  # every ordered pair of distinct views occurs, roughly uniformly


def test_same_view_prob_mixes_in_identity_pairs_without_changing_the_others(data_root):
    plain = ViewPairDataset(data_root, "train", seed=0)
    mixed = ViewPairDataset(data_root, "train", seed=0, same_view_prob=0.25)
    pairs, ref = [mixed.view_pair(d, 0) for d in range(2000)], [plain.view_pair(d, 0) for d in range(2000)]
    same = [t == c for t, c in pairs]
    assert 0.2 < np.mean(same) < 0.3
    # the target view is the one the plain stream draws; distinct pairs are exactly the plain ones
    assert all(p[0] == r[0] for p, r in zip(pairs, ref))
    assert all(p == r for p, r, s_ in zip(pairs, ref, same) if not s_)
    item = mixed[(next(d for d, s_ in enumerate(same) if s_), 0)]
    torch.testing.assert_close(item["cond"], item["target"])
    torch.testing.assert_close(item["camera"], embedding_from_rt("zero123", torch.eye(4)[:3], torch.eye(4)[:3]))
    with pytest.raises(Zero123Error, match="same_view_prob"):
        ViewPairDataset(data_root, "train", same_view_prob=1.5)


def _draws(sampler):
    return [d for d, _ in sampler]


def test_draw_stream_epochs_are_permutations():
    s = DrawStream(7, seed=5)
    for epoch in range(3):
        assert sorted(s.item(d) for d in range(7 * epoch, 7 * epoch + 7)) == list(range(7))
    assert [s.item(d) for d in range(7)] != [s.item(d) for d in range(7, 14)]
    assert [DrawStream(7, 5).item(d) for d in range(20)] == [s.item(d) for d in range(20)]


def test_draw_sampler_gives_the_same_step_data_for_any_process_split():
    stream = DrawStream(10, seed=0)
    one = _draws(DrawSampler(stream, micro_batch=8, num_micro_steps=3))  # 1 process, batch 8
    assert one == list(range(24))
    # 2 processes x batch 2 x accumulation 2: each optimizer step covers the same 8 draws
    per_proc = [_draws(DrawSampler(stream, 2, num_processes=2, process_index=p, num_micro_steps=6)) for p in (0, 1)]
    for step in range(3):
        got = sorted(per_proc[0][4 * step:4 * step + 4] + per_proc[1][4 * step:4 * step + 4])
        assert got == list(range(8 * step, 8 * step + 8))
    # resuming at a draw offset continues the stream
    assert _draws(DrawSampler(stream, 8, start_draw=16, num_micro_steps=1)) == list(range(16, 24))
    assert [i for _, i in DrawSampler(stream, 4, num_micro_steps=5)] == [stream.item(d) for d in range(20)]


def test_bad_datasets_raise_clear_errors(tmp_path, data_root):
    with pytest.raises(Zero123Error, match="manifest.json"):
        ViewPairDataset(tmp_path, "train")
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "image_size": 32, "fov_deg": 40,
                                                        "views_per_object": 2, "objects": [
                                                            {"id": "gone", "split": "train", "num_views": 2}]}))
    with pytest.raises(Zero123Error, match="missing"):
        ViewPairDataset(tmp_path, "train")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(Zero123Error):
        ViewPairDataset(tmp_path, "train")
    with pytest.raises(Zero123Error, match="split"):
        ViewPairDataset(data_root, "training")
    bad = tmp_path / "bad"
    write_synthetic_dataset(bad, num_objects=2, views_per_object=2, image_size=8, val_objects=0)
    np.save(bad / "box_0000" / "001.npy", np.zeros((4, 4), np.float32))
    ds = ViewPairDataset(bad, "train")
    with pytest.raises(Zero123Error, match="3x4"):
        ds.load_view(0, 1)
