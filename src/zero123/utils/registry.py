"""Name -> class registries (image-to-3D's representations and guidances): one decorator and one lookup."""

from __future__ import annotations

from typing import Callable, Dict

from ..errors import Zero123Error


def registrar(registry: Dict[str, type]) -> Callable[[type], type]:
    """A class decorator that adds a class to ``registry`` under its ``name`` attribute."""

    def register(cls: type) -> type:
        if not getattr(cls, "name", ""):
            raise TypeError(f"{cls.__name__} has no registry name")
        registry[cls.name] = cls
        return cls

    return register


def lookup(registry: Dict[str, type], key: str, kind: str) -> type:
    """``registry[key]``, or a one-line ``Zero123Error`` naming the ``kind``, the key and the known ones."""
    cls = registry.get(key)
    if cls is None:
        raise Zero123Error(f"unknown {kind} {key!r}: use one of {', '.join(registry)}")
    return cls
