"""Several rendered datasets as one: a folder of links to their objects and one manifest.

``merge_datasets(out, [root_a, root_b])`` writes ``out/manifest.json`` listing the objects of every source with
the split each source gave it, and ``out/<object_id>`` as a symbolic link to the source's object folder (no image
is copied, so the sources must stay where they are). Typical use: more training objects next to a dataset whose
held-out objects must not move, e.g. ``render-dataset --seed 1 --test-fraction 0`` (all train; the procedural
ids ``proc_1_*`` differ from seed 0's ``proc_0_*``) merged with the seed-0 render.

The sources must agree on image size and field of view; an object id present in two sources is an error. The
output is built in a temporary sibling folder and renamed into place, so it is never half-written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import Zero123Error
from . import layout


def merge_datasets(out: layout.PathLike, roots: Sequence[layout.PathLike]) -> layout.Manifest:
    """Write the merged dataset at ``out`` (which must not exist yet) and return its manifest."""
    out = Path(out)
    if not roots:
        raise Zero123Error("merge: give at least one dataset folder")
    if out.exists():
        raise Zero123Error(f"{out} already exists: choose a new output folder")
    sources = [(Path(r).resolve(), layout.read_manifest(r)) for r in roots]
    first_root, first = sources[0]
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
    manifest = layout.Manifest(image_size=first.image_size, fov_deg=first.fov_deg,
                               views_per_object=max(m.views_per_object for _, m in sources), objects=objects,
                               skipped=skipped,
                               settings={"merged_from": [{"root": str(r), "settings": m.settings} for r, m in sources]})
    from ..utils.atomic import atomic_folder

    with atomic_folder(out) as tmp:
        for o in objects:
            target = owner[o.id] / o.id
            if not target.is_dir():
                raise Zero123Error(f"{owner[o.id]}: object folder {o.id!r} of its manifest is missing")
            os.symlink(target, tmp / o.id, target_is_directory=True)
        layout.write_manifest(tmp, manifest)
    return manifest
