"""Step-dependent scalars, threestudio's ``C()`` convention.

A value is either a number (constant) or a list ``[start_step, start_value, end_value, end_step]``: the value is
``start_value`` until ``start_step``, then linear to ``end_value`` at ``end_step``, then constant. Longer lists
``[s0, v0, v1, s1, v2, s2, ...]`` continue piecewise-linearly through ``(s1, v1), (s2, v2), ...`` (threestudio's
extended form, e.g. ``lambda_normal_smooth: [100, 7.0, 5.0, 150, 10.0, 200]`` = 7 until step 100, 5 at 150, 10
from 200). A 3-element list ``[v0, v1, s1]`` starts at step 0.
"""

from __future__ import annotations

from typing import Sequence, Union

from ..errors import Zero123Error

ScheduleSpec = Union[float, int, Sequence[float]]


def _points(spec: Sequence[float]):
    v = [float(x) for x in spec]
    if len(v) == 3:
        v = [0.0] + v
    if len(v) < 4 or len(v) % 2:
        raise Zero123Error(f"schedule {list(spec)} must be a number or [start_step, start_value, end_value, "
                           "end_step(, value, step)...]")
    pts = [(v[0], v[1]), (v[3], v[2])]
    for i in range(4, len(v), 2):
        pts.append((v[i + 1], v[i]))
    steps = [p[0] for p in pts]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise Zero123Error(f"schedule {list(spec)}: steps must increase")
    return pts


def scheduled_value(spec: ScheduleSpec, step: float) -> float:
    """The value of ``spec`` at ``step``, computed exactly as threestudio's ``C()`` (``threestudio/utils/misc.py``):
    on the segment ``(s0, v0) -> (s1, v1)`` that is the last to start at or before ``step`` (the first one before
    it), ``v0 + (v1 - v0) * clamp((step - s0) / (s1 - s0), 0, 1)``. The fraction is formed first: the
    algebraically equal ``v0 + (v1 - v0) * (step - s0) / (s1 - s0)`` rounds differently and, through ``int()``,
    moves the t range by one at 10 of the 150 ramp steps of ``stable-zero123.yaml``."""
    if isinstance(spec, (int, float)):
        return float(spec)
    pts = _points(spec)
    seg = 0
    for i in range(1, len(pts) - 1):
        if step >= pts[i][0]:
            seg = i
    (s0, v0), (s1, v1) = pts[seg], pts[seg + 1]
    return v0 + (v1 - v0) * max(min(1.0, (step - s0) / (s1 - s0)), 0.0)


def scale_schedule(spec: ScheduleSpec, factor: float) -> ScheduleSpec:
    """The same schedule with every step keypoint multiplied by ``factor`` (for shorter/longer runs)."""
    if isinstance(spec, (int, float)):
        return spec
    pts = _points(spec)
    out = [pts[0][0] * factor, pts[0][1], pts[1][1], pts[1][0] * factor]
    for s, v in pts[2:]:
        out += [v, s * factor]
    return out
