"""User-facing errors. The CLI prints ``Zero123Error`` as one line (``zero123: error: ...``) and exits with 2."""


class Zero123Error(Exception):
    """A problem with the user's input (file, checkpoint, camera, image) described in one line."""


class CheckpointError(Zero123Error):
    """A checkpoint file or folder that cannot be loaded: missing, truncated, unsafe, wrong layout or variant."""
