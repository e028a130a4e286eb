"""Several rendered datasets as one: a folder of links to their objects and one manifest.

``merge_datasets(out, [root_a, root_b])`` writes ``out/manifest.json`` listing the objects of every source with
the split each source gave it, and ``out/<object_id>`` as a symbolic link to the source's object folder (no image
is copied, so the sources must stay where they are). Typical use: more training objects next to a dataset whose
held-out objects must not move, e.g. ``render-dataset --seed 1 --test-fraction 0`` (all train; the procedural
ids ``proc_1_*`` differ from seed 0's ``proc_0_*``) merged with the seed-0 render.

The sources must agree on image size and field of view; an object id present in two sources is an error. The
output is built in a temporary sibling folder and renamed into place, so it is never half-written.

Shards (``render-dataset --shard K/N``, :mod:`zero123.data.shards`): when the sources are shards, they must be
all N shards of one render (same settings and object list); the merged manifest then lists the objects and
skipped inputs in the order of the whole render, with its settings, so it EQUALS the manifest an unsharded
render of the same objects writes (``manifest.json`` byte for byte) and the linked views are its files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import Zero123Error
from . import layout
from .shards import Shard, check_complete


def _shard_of(m: layout.Manifest):
    sh = m.settings.get("shard")
    return None if sh is None else Shard(int(sh["index"]), int(sh["count"]))


def _merge_shards(sources) -> layout.Manifest:
    """The manifest of the whole render from the manifests of its shards (see the module docstring)."""
    shards = [_shard_of(m) for _, m in sources]
    if None in shards:
        whole = sources[shards.index(None)][0]
        part = next(r for (r, _), sh in zip(sources, shards) if sh is not None)
        raise Zero123Error(f"{part} is a shard (render-dataset --shard) and {whole} is not: merge the shards of "
                           "a render first, then merge that dataset with others")
    check_complete(shards, "render")
    common = {k: v for k, v in sources[0][1].settings.items() if k != "shard"}
    num_sources = sources[0][1].settings["shard"]["num_sources"]
    objects, skipped = [], []
    for root, m in sources:
        sh = m.settings["shard"]
        rest = {k: v for k, v in m.settings.items() if k != "shard"}
        if rest != common or sh["num_sources"] != num_sources:
            raise Zero123Error(f"{root} (shard {_shard_of(m)}) is a shard of another render: its settings or "
                               f"object count ({sh['num_sources']}) differ from {sources[0][0]}'s ({num_sources})")
        if len(sh["object_positions"]) != len(m.objects) or len(sh["skipped_positions"]) != len(m.skipped):
            raise Zero123Error(f"{root}: manifest of shard {_shard_of(m)} is inconsistent (positions vs entries)")
        objects += zip(sh["object_positions"], m.objects)
        skipped += zip(sh["skipped_positions"], m.skipped)
    first = sources[0][1]
    return layout.Manifest(image_size=first.image_size, fov_deg=first.fov_deg,
                           views_per_object=first.views_per_object,
                           objects=[o for _, o in sorted(objects, key=lambda t: t[0])],
                           skipped=[s for _, s in sorted(skipped, key=lambda t: t[0])], settings=common)


def merge_datasets(out: layout.PathLike, roots: Sequence[layout.PathLike]) -> layout.Manifest:
    """Write the merged dataset at ``out`` (which must not exist yet) and return its manifest."""
    out = Path(out)
    if not roots:
        raise Zero123Error("merge: give at least one dataset folder")
    if out.exists():
        raise Zero123Error(f"{out} already exists: choose a new output folder")
    sources = [(Path(r).resolve(), layout.read_manifest(r)) for r in roots]
    first_root, first = sources[0]
    try:
        sharded = _merge_shards(sources) if any(_shard_of(m) is not None for _, m in sources) else None
    except (KeyError, TypeError, ValueError) as exc:  # a hand-edited "shard" record
        raise Zero123Error(f"merge: malformed shard record in a manifest ({type(exc).__name__}: {exc})") from None
    owner: dict[str, Path] = {}
    objects, skipped = [], []
    for root, m in sources:
        if (m.image_size, m.fov_deg) != (first.image_size, first.fov_deg):
            raise Zero123Error(f"{root}: image size {m.image_size} px / fov {m.fov_deg} deg differs from "
                               f"{first_root}'s {first.image_size} px / {first.fov_deg} deg")
        for o in m.objects:
            if o.id in owner:
                raise Zero123Error(f"object id {o.id!r} is in both {owner[o.id]} and {root}")
            owner[o.id] = root
            objects.append(o)
        skipped += m.skipped
    if sharded is not None:
        manifest = sharded
    else:
        manifest = layout.Manifest(image_size=first.image_size, fov_deg=first.fov_deg,
                                   views_per_object=max(m.views_per_object for _, m in sources), objects=objects,
                                   skipped=skipped, settings={"merged_from": [{"root": str(r), "settings": m.settings}
                                                                              for r, m in sources]})
    from ..utils.atomic import atomic_folder

    with atomic_folder(out) as tmp:
        for o in objects:
            target = owner[o.id] / o.id
            if not target.is_dir():
                raise Zero123Error(f"{owner[o.id]}: object folder {o.id!r} of its manifest is missing")
            os.symlink(target, tmp / o.id, target_is_directory=True)
        layout.write_manifest(tmp, manifest)
    return manifest
