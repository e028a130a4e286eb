"""Deterministic shards of a set of objects, so that N machines (a SLURM array, any scheduler) share one job.

``Shard(index=K, count=N)`` (written ``K/N`` on the command line, ``0 <= K < N``, as ``$SLURM_ARRAY_TASK_ID``
counts) holds the objects whose id hashes to ``K`` modulo ``N``::

    shard_of(object_id, N) = int(sha256("shard:" + object_id)[:16 hex digits]) % N

The shard of an object depends on its id and ``N`` only: not on the other objects, their order or the machine,
so every machine computes the same disjoint split from the same object list, and adding objects never moves an
existing one to another shard of the same ``N``. Hashing (rather than taking every N-th object) also spreads
the object families of a procedural set, which come in a fixed cycle, evenly over the shards.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import Zero123Error

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_of(object_id: str, count: int) -> int:
    """The shard (``0 .. count-1``) that holds ``object_id`` among ``count`` shards."""
    if count < 1:
        raise Zero123Error(f"shard count must be >= 1, got {count}")
    h = hashlib.sha256(f"shard:{object_id}".encode()).hexdigest()
    return int(h[:16], 16) % int(count)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based index)."""

    index: int
    count: int

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1):
            raise Zero123Error(f"shard count must be an integer >= 1, got {self.count!r}")
        if not (isinstance(self.index, int) and 0 <= self.index < self.count):
            raise Zero123Error(f"shard index must be in [0, {self.count - 1}] for {self.count} shards "
                               f"(0-based, as $SLURM_ARRAY_TASK_ID), got {self.index!r}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` -> ``Shard(K, N)``; one-line ``Zero123Error`` on anything else."""
        m = _SHARD_RE.match(str(text))
        if not m:
            raise Zero123Error(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/8")
        return cls(int(m.group(1)), int(m.group(2)))

    def contains(self, object_id: str) -> bool:
        return shard_of(object_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def check_complete(shards, what: str = "dataset") -> int:
    """``shards``: the ``Shard`` of each input, in input order. Returns their common count; ``Zero123Error``
    if the counts differ, a shard is given twice or one is missing."""
    shards = list(shards)
    counts = {s.count for s in shards}
    if len(counts) != 1:
        raise Zero123Error(f"the {what} shards were made with different shard counts: "
                           f"{', '.join(sorted(str(s) for s in shards))}")
    count = counts.pop()
    seen = set()
    for s in shards:
        if s.index in seen:
            raise Zero123Error(f"{what} shard {s} is given twice")
        seen.add(s.index)
    missing = [str(Shard(k, count)) for k in range(count) if k not in seen]
    if missing:
        raise Zero123Error(f"{what} shard(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                           f"missing: give all {count} shards")
    return count
