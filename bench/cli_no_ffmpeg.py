"""``python bench/cli_no_ffmpeg.py ARGS``: the ``zero123`` command on a machine without imageio-ffmpeg (the lent GPU
machines): turntable MP4s are replaced by their raw frames (``bench/_no_ffmpeg.py``), everything else runs as is."""

import sys

from _no_ffmpeg import skip_mp4_if_no_ffmpeg

if __name__ == "__main__":
    skip_mp4_if_no_ffmpeg()  # prints a note when it replaces the MP4 writer
    from zero123.cli import main

    sys.exit(main(sys.argv[1:]))
