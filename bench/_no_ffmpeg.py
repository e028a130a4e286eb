"""Benchmarks on machines without ffmpeg (the lent GPU machines cannot install imageio-ffmpeg's 68 MB wheel).

``skip_mp4_if_no_ffmpeg()`` replaces ``zero123.export.writers.write_mp4`` by a stand-in that writes the raw
frames (``.npy``) when imageio-ffmpeg is missing, so the rest of the export (frame rendering on the GPU, GIF,
meshes) is still timed. H.264 encoding (CPU work) is then not part of the figures.
Returns a note for the results, or ``None`` when ffmpeg is there and nothing was replaced.
"""

from __future__ import annotations

import importlib.util


def skip_mp4_if_no_ffmpeg() -> str | None:
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return None
    import numpy as np

    from zero123.export import writers

    def write_frames(frames, path, fps: int = 30):
        def save(tmp):
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a path
                np.save(f, np.asarray(frames))

        return writers.atomic_write_with(path, save)

    writers.write_mp4 = write_frames
    note = "imageio-ffmpeg missing: turntable MP4 written as raw frames (.npy), H.264 encoding not timed"
    print(f"note: {note}", flush=True)
    return note
