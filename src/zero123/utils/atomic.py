"""The package's one atomic writer, for files and for folders.

A file is written under a hidden temporary name in its destination folder (``.<stem>.XXXX.tmp<suffix>``: the
suffix is kept so that PIL, torch, trimesh, ... detect the format) and moved into place with ``os.replace``; a
folder is filled as a hidden temporary sibling and swapped in whole. An interrupted write therefore never
leaves a truncated file or a half-filled folder under the final name, and the temporary is removed on error.

Permissions are the usual ones: files ``0666 & ~umask`` (0644 under the common umask 022), folders
``0777 & ~umask`` (0755), not the 0600 / 0700 that ``tempfile`` gives its names.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["current_umask", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_image",
           "atomic_folder", "replace_folder", "reset_folder"]


def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where possible: ``os.umask`` must set it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, writer: Callable[[Path], object], mode: int = 0o666) -> Path:
    """Call ``writer(tmp)`` to write a temporary sibling of ``path``, give it ``mode & ~umask`` and move it to
    ``path`` (parent folders are created). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        os.chmod(tmp, mode & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_save_image(image, path, **save_kwargs) -> Path:
    """Save a PIL image atomically; the format comes from ``path``'s suffix (``.png``, ``.jpg``, ...)."""
    return atomic_write(path, lambda tmp: image.save(tmp, **save_kwargs))


def replace_folder(src, dst) -> Path:
    """Move folder ``src`` to ``dst`` (same file system). An existing ``dst`` is renamed aside first and deleted
    after the move, so ``dst`` always names either the old folder or the new one, never a mixture."""
    src, dst = Path(src), Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        os.replace(src, dst)
        return dst
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    if old.is_symlink() or not old.is_dir():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
    return dst


@contextlib.contextmanager
def atomic_folder(path) -> Iterator[Path]:
    """``with atomic_folder(out) as tmp:`` fill ``tmp`` (a new empty hidden sibling of ``out``); on a normal exit
    it replaces ``out`` whole (:func:`replace_folder`), on an exception it is deleted and ``out`` is untouched.
    ``out`` is resolved first: ``--out .`` or a symlink to a folder replace the folder itself."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def reset_folder(path) -> Path:
    """Make ``path`` an empty folder now, replacing whatever folder was there whole (for writers that fill a
    folder step by step, such as a resumable run)."""
    with atomic_folder(path):
        pass
    return Path(path)
