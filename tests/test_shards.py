"""Sharded rendering (``render-dataset --shard K/N``) and the merge that rebuilds the whole render."""

import collections

import pytest
import trimesh

from zero123.cli import main
from zero123.data import layout
from zero123.data.shards import Shard, check_complete, shard_of
from zero123.errors import Zero123Error


def test_shard_assignment_is_a_deterministic_partition():
    ids = [f"obj_{i:04d}" for i in range(3000)]
    for n in (1, 3, 8):
        owners = [[Shard(k, n).contains(i) for k in range(n)] for i in ids]
        assert all(sum(o) == 1 for o in owners)  # disjoint and complete
        sizes = collections.Counter(shard_of(i, n) for i in ids)
        assert min(sizes.values()) > 0.8 * len(ids) / n  # balanced
    # an object's shard depends on its id only (not on the list or its order)
    assert [shard_of(i, 8) for i in ids[:50]] == [shard_of(i, 8) for i in reversed(ids[:50])][::-1]
    assert Shard.parse(" 2/8") == Shard(2, 8) and str(Shard(2, 8)) == "2/8"
    for bad, msg in [("8/8", r"\[0, 7\]"), ("1", "K/N"), ("-1/3", "K/N"), ("0/0", ">= 1")]:
        with pytest.raises(Zero123Error, match=msg):
            Shard.parse(bad)
    assert check_complete([Shard(1, 2), Shard(0, 2)]) == 2
    for shards, msg in [([Shard(0, 2)], "1/2 missing"), ([Shard(0, 2), Shard(0, 2), Shard(1, 2)], "twice"),
                        ([Shard(0, 2), Shard(0, 3)], "different shard counts")]:
        with pytest.raises(Zero123Error, match=msg):
            check_complete(shards)


def test_three_shards_merged_equal_the_whole_render(tmp_path, capsys):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box(extents=[1.0, 2.0, 0.5]).export(meshes / "box.ply")
    trimesh.creation.icosphere(subdivisions=1).export(meshes / "ball.obj")
    (meshes / "broken.obj").write_text("# no faces\n")  # listed under "skipped", in its place
    common = ["--procedural", "5", "--meshes", str(meshes), "--up", "z", "--views", "2", "--size", "24",
              "--samples", "1", "--seed", "3", "--test-fraction", "0.25", "--val-fraction", "0.15", "--workers", "1",
              "--quiet"]
    whole = tmp_path / "whole"
    assert main(["render-dataset", "--out", str(whole), *common]) == 0
    shards = [tmp_path / f"shard_{k}" for k in range(3)]
    for k, root in enumerate(shards):
        assert main(["render-dataset", "--out", str(root), "--shard", f"{k}/3", *common]) == 0
        assert f"(shard {k}/3 of 8 objects)" in capsys.readouterr().out
    w = layout.read_manifest(whole)
    parts = [layout.read_manifest(r) for r in shards]
    ids = [[o.id for o in m.objects] for m in parts]
    assert all(ids) and sorted(sum(ids, [])) == sorted(o.id for o in w.objects)  # disjoint, complete, non-empty
    assert sum(len(m.skipped) for m in parts) == len(w.skipped) == 1
    split = {o.id: o.split for o in w.objects}
    assert set(split.values()) == {"train", "val", "test"}
    assert all(o.split == split[o.id] for m in parts for o in m.objects)  # a shard keeps the whole render's split

    # merging in any order rebuilds the whole render's manifest, byte for byte, and its images and cameras
    merged = tmp_path / "merged"
    assert main(["merge-datasets", "--out", str(merged), str(shards[2]), str(shards[0]), str(shards[1])]) == 0
    assert (merged / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()
    layout.check_dataset(merged)
    for o in w.objects:
        for i in range(o.num_views):
            for p in (layout.image_path, layout.camera_path):
                assert p(merged, o.id, i).read_bytes() == p(whole, o.id, i).read_bytes(), (o.id, i)

    # bad merges: a missing shard, a shard twice, shards of another render, a shard with a whole dataset
    other = tmp_path / "other_0"
    assert main(["render-dataset", "--out", str(other), "--shard", "0/3", *common, "--seed", "4"]) == 0
    capsys.readouterr()
    for roots, msg in [(shards[:2], "shard(s) 2/3 missing"), ([shards[0], *shards], "0/3 is given twice"),
                       ([other, *shards[1:]], "shard of another render"), ([whole, *shards], "is not: merge")]:
        assert main(["merge-datasets", "--out", str(tmp_path / "bad")] + [str(r) for r in roots]) == 2
        err = capsys.readouterr().err
        assert err.startswith("zero123: error:") and msg in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()
    assert main(["render-dataset", "--out", str(tmp_path / "x"), "--shard", "3/3", *common]) == 2
    assert "[0, 2]" in capsys.readouterr().err and not (tmp_path / "x").exists()
