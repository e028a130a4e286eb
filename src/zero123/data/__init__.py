"""Multi-view datasets: on-disk layout (``layout``), object sources (``objects``), the CPU renderer (``render``).

Import the submodules explicitly (``from zero123.data.layout import read_manifest``); importing this package
loads nothing heavy.
"""
