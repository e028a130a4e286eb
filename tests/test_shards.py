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


def _main(argv):
    """``zero123 ARGV`` in this process, with accelerate's process-wide state reset (one Accelerator a run)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return main(argv)


def test_latent_cache_in_three_shards_merges_to_the_whole_cache_and_trains_the_same(tmp_path, capsys):
    import json

    import torch

    from zero123.training.latent_cache import LatentCache
    from zero123.training.synthetic import write_synthetic_dataset

    torch.set_num_threads(1)
    data = write_synthetic_dataset(tmp_path / "data", num_objects=6, views_per_object=3, image_size=32, seed=4,
                                   val_objects=0)
    cfg = [str(layout.Path(__file__).resolve().parents[1] / "configs" / "tiny_test.yaml"), f"data.root={data}",
           "mixed_precision=no"]
    whole, parts = tmp_path / "whole.safetensors", [tmp_path / f"part_{k}.safetensors" for k in range(3)]
    assert _main(["cache-latents", *cfg, "--out", str(whole), "--batch-size", "1"]) == 0
    for k, p in enumerate(parts):
        assert _main(["cache-latents", *cfg, "--shard", f"{k}/3", "--out", str(p), "--batch-size", "1"]) == 0
    merged = tmp_path / "merged.safetensors"
    assert _main(["cache-latents", "--merge", str(parts[1]), str(parts[2]), str(parts[0]), "--out",
                  str(merged)]) == 0
    assert "6 objects, 18 views" in capsys.readouterr().out
    w, m = LatentCache.load(whole), LatentCache.load(merged)
    shard_ids = [LatentCache.load(p).meta["object_ids"] for p in parts]
    # box_0000.. hash to shards 2, 1, 2, 1, ...: shard 0 is empty (allowed), the others interleave
    assert [len(i) for i in shard_ids] == [0, 3, 3] and sorted(sum(shard_ids, [])) == sorted(w.meta["object_ids"])
    assert m.meta["object_ids"] == w.meta["object_ids"] and torch.equal(m.num_views, w.num_views)
    assert torch.equal(m.mean, w.mean) and torch.equal(m.std, w.std)  # same batch composition: bit-equal
    assert m.meta["vae_sha256"] == w.meta["vae_sha256"] and len(w.meta["vae_sha256"]) == 64

    # training from the file == training with the cache built at start-up (other batches: float rounding)
    run = ["max_steps=3", "log_every=1", "sample.every=0", "val_every=0", "checkpoint_every=0", "export=false",
           "optim.warmup_steps=0", "data.cache_latents=true"]
    assert _main(["train", *cfg, *run, "--output-dir", str(tmp_path / "built")]) == 0
    assert _main(["train", *cfg, *run, f"data.latent_cache_file={merged}", "--output-dir", str(tmp_path / "file")]) == 0
    assert "views read in" in capsys.readouterr().out
    losses = [[json.loads(x)["loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
              for d in ("built", "file")]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)

    # refused: a shard alone, a missing shard, another dataset, another VAE; one line, exit 2
    other = write_synthetic_dataset(tmp_path / "other", num_objects=5, views_per_object=3, image_size=32, seed=1,
                                    val_objects=0)
    for argv, msg in [(["train", *cfg, *run, f"data.latent_cache_file={parts[0]}"], "shard"),
                      (["cache-latents", "--merge", str(parts[0]), str(parts[1]), "--out", str(tmp_path / "x")],
                       "2/3 missing"),
                      (["train", *cfg, *run, f"data.latent_cache_file={merged}", f"data.root={other}"],
                       "other objects"),
                      (["train", *cfg, *run, f"data.latent_cache_file={merged}", "seed=1"], "another VAE"),
                      (["cache-latents", *cfg, "--out", str(whole)], "already exists")]:
        assert _main([*argv, "--output-dir", str(tmp_path / "bad")] if argv[0] == "train" else argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("zero123: error:") and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
