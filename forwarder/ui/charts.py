"""Line charts as inline SVG, drawn in Python: no chart library, nothing fetched at run time.

`line_chart(points)` returns SVG markup (escaped, safe to embed) with one `<circle class="point">`
per data point carrying its value in `data-value`, so browser tests can count what is drawn.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

from markupsafe import Markup

__all__ = ["Point", "line_chart"]

_WIDTH = 640
_HEIGHT = 180
_PAD = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    """x: seconds since the epoch; y: the value."""

    x: float
    y: float


def line_chart(points: Sequence[Point], *, title: str, unit: str, start: float, end: float) -> Markup:
    """An SVG chart of `points` over [start, end] (x) and [0, max y] (y), titled for screen readers."""
    top = max((point.y for point in points), default=0.0) or 1.0
    span = max(end - start, 1.0)

    def place(point: Point) -> tuple[float, float]:
        x = _PAD + (point.x - start) / span * (_WIDTH - 2 * _PAD)
        y = _HEIGHT - _PAD - point.y / top * (_HEIGHT - 2 * _PAD)
        return round(x, 1), round(y, 1)

    placed = [place(point) for point in points]
    path = " ".join(f"{x},{y}" for x, y in placed)
    unit_text = html.escape(unit)
    circles = "".join(
        f'<circle class="point" cx="{x}" cy="{y}" r="2.5" data-value="{point.y:g}">'
        f"<title>{point.y:g} {unit_text}</title></circle>"
        for (x, y), point in zip(placed, points, strict=True)
    )
    label = html.escape(title)
    axes = (
        f'<line x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - _PAD}" y2="{_HEIGHT - _PAD}" class="axis"/>'
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_HEIGHT - _PAD}" class="axis"/>'
        f'<text x="{_PAD - 4}" y="{_PAD + 4}" text-anchor="end" class="tick">{top:g}</text>'
        f'<text x="{_PAD - 4}" y="{_HEIGHT - _PAD}" text-anchor="end" class="tick">0</text>'
        f'<text x="{_WIDTH - _PAD}" y="{_HEIGHT - 8}" text-anchor="end" class="tick">now</text>'
        f'<text x="{_PAD}" y="{_HEIGHT - 8}" class="tick">-{round(span / 60)} min</text>'
    )
    line = f'<polyline class="line" fill="none" points="{path}"/>' if placed else ""
    return Markup(
        f'<svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{label}</title>{axes}{line}{circles}</svg>'
    )
