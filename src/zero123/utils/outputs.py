"""Output folders and files, checked before any model work.

Every command that writes a folder calls :func:`check_output_dir` first (cheap: no model is loaded yet). It gives
a one-line ``Zero123Error`` when the path

* is an existing file, or lies under one (``out.png/views``);
* cannot be written: the nearest existing folder (and, to replace a folder, its parent) fails
  ``os.access(W_OK | X_OK)``;
* is a folder holding entries that the command does not write itself (someone else's files): those are never
  deleted or mixed with ours.

A folder holding only this command's own earlier outputs (names in its :class:`OutputLayout`) is then replaced
whole by the writer (``zero123.utils.atomic.atomic_folder`` / ``reset_folder``): old and new files never mix.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import Zero123Error

#: hidden temporaries left by an interrupted atomic write (``zero123.utils.atomic``): always ours
_TEMPORARIES = (".*.tmp*", ".*.old-*")


@dataclass(frozen=True)
class OutputLayout:
    """The top-level entries a command writes into its output folder, as ``fnmatch`` patterns."""

    command: str
    names: tuple[str, ...]

    def owns(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.names + _TEMPORARIES)

    def __add__(self, other: "OutputLayout") -> "OutputLayout":
        return OutputLayout(self.command, self.names + other.names)


VIEWS_OUTPUTS = OutputLayout("views", ("input_rgba.png", "mask.png", "view_[0-9][0-9]*.png", "grid.png",
                                       "views.json"))
TO3D_OUTPUTS = OutputLayout("to3d", ("input_rgba.png", "mask.png", "input.png", "model.obj", "model.mtl",
                                     "material_*.png", "model.glb", "model.ply", "turntable.mp4", "turntable.gif",
                                     "preview.png", "result.json", "checkpoints"))
TEXT_TO_3D_OUTPUTS = OutputLayout("text-to-3d", ("candidates", "text_to_3d.json")) + TO3D_OUTPUTS
DATASET_OUTPUTS = OutputLayout("render-dataset", ("manifest.json",))  # (object folders have any name: keep=True)
CONVERT_OUTPUTS = OutputLayout("convert", ("model_index.json", "sampling.json", "zero123.json", "unet", "vae",
                                           "image_encoder", "cc_projection", "scheduler", "feature_extractor"))


def is_within(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def _nearest_existing(path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``path`` (``path`` itself if it exists); an error if it is a file."""
    p = path
    while not (p.exists() or p.is_symlink()):
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        raise Zero123Error(f"{flag} {path}: {p} is a file, not a folder")
    return p


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Zero123Error(f"cannot write {flag} {path}: the folder {folder} is not writable (permission denied)")


def check_output_dir(path, layout: OutputLayout, flag: str = "--out", keep: bool = False) -> str:
    """Check the output folder ``path`` of ``layout.command`` (see module docstring).

    ``keep=True``: the folder is continued in place (``to3d --resume DIR --out DIR``), so its entries are not
    checked. Returns ``"new"`` (does not exist), ``"empty"``, ``"replace"`` (holds only our earlier outputs)
    or ``"keep"``.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise Zero123Error(f"{flag} {path} is a file, not a folder")
    existing = _nearest_existing(path, flag)
    if existing != path:
        _check_writable(existing, path, flag)
        return "new"
    _check_writable(path, path, flag)
    if keep:
        return "keep"
    entries = sorted(e.name for e in path.iterdir())
    if not entries:
        return "empty"
    foreign = [n for n in entries if not layout.owns(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise Zero123Error(f"{flag} {path} holds files that `zero123 {layout.command}` did not write ({shown}): "
                           "give a new or empty folder")
    _check_writable(path.resolve().parent, path, flag)  # the folder is replaced whole: a sibling is made
    return "replace"


def remove_outputs(path, layout: OutputLayout, keep: tuple[str, ...] = ()) -> None:
    """Delete the entries of folder ``path`` that ``layout`` owns (an earlier run's files), except ``keep``; other
    entries stay. For a folder shared by two commands (``to3d`` rerun in a ``text-to-3d`` folder)."""
    import shutil

    for entry in Path(path).iterdir():
        if layout.owns(entry.name) and entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def check_output_file(path, flag: str = "--out") -> Path:
    """Check an output file path: not a folder, not under a file, its folder writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise Zero123Error(f"{flag} {path} is a folder; give a file name")
    _check_writable(_nearest_existing(path.parent, flag), path, flag)
    return path
