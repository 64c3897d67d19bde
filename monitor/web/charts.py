"""Small server-rendered SVG charts: no JavaScript, no CDN, readable at any width."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 320, 56, 16, 16, 40


def _scale(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    """Affine map [lo, hi] → [a, b] as (gain, offset)."""
    span = hi - lo or 1.0
    gain = (b - a) / span
    return gain, a - lo * gain


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10(max((hi - lo) / n, 1e-9)))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _frame(y_lo: float, y_hi: float, label: str) -> tuple[list[str], float, float]:
    gy, oy = _scale(y_lo, y_hi, H - PAD_B, PAD_T)
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}">']
    for t in _ticks(y_lo, y_hi):
        y = gy * t + oy
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6eaef"/>'
        )
        parts.append(
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#5b6b7c">{t:g}</text>'
        )
    parts.append(
        f'<text x="12" y="{PAD_T + 10}" font-size="11" fill="#5b6b7c">{escape(label)}</text>'
    )
    return parts, gy, oy


def error_bars(rows: Sequence[tuple[str, float, float, float]], limit: float | None) -> str:
    """Each meter's estimated error with its interval, against ±limit.

    rows: (meter, error, low, high) in percent.
    """
    if not rows:
        return '<p class="muted">No evaluable estimates.</p>'
    values = [v for _, e, lo, hi in rows for v in (e, lo, hi)] + ([limit, -limit] if limit else [])
    y_lo, y_hi = min(values) - 0.5, max(values) + 0.5
    parts, gy, oy = _frame(y_lo, y_hi, "estimated error, % (95 % interval)")
    gx, ox = _scale(-0.5, len(rows) - 0.5, PAD_L, W - PAD_R)
    if limit:
        for lim in (limit, -limit):
            y = gy * lim + oy
            parts.append(
                f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#cf222e" stroke-dasharray="5 4"/>'
            )
    for i, (meter, e, lo, hi) in enumerate(rows):
        x = gx * i + ox
        beyond = limit is not None and (lo > limit or hi < -limit)
        colour = "#cf222e" if beyond else "#0b5cad"
        parts.append(
            f"<g><title>{escape(meter)}: {e:.2f} % [{lo:.2f}, {hi:.2f}]</title>"
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{gy * lo + oy:.1f}" y2="{gy * hi + oy:.1f}" '
            f'stroke="{colour}"/><circle cx="{x:.1f}" cy="{gy * e + oy:.1f}" r="3" '
            f'fill="{colour}"/></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def series(
    points: Sequence[tuple[int, float]], label: str, max_points: int = 1500, dots: bool = False
) -> str:
    """A time series (epoch ms, value), thinned to `max_points` for the browser."""
    if len(points) < 2:
        return '<p class="muted">Not enough data to draw.</p>'
    step = max(1, len(points) // max_points)
    pts = list(points[::step])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.05 or 1.0
    parts, gy, oy = _frame(y_lo - pad, y_hi + pad, label)
    gx, ox = _scale(xs[0], xs[-1], PAD_L, W - PAD_R)
    coords = [(gx * x + ox, gy * y + oy) for x, y in zip(xs, ys, strict=True)]
    if dots:
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#0b5cad"/>' for x, y in coords]
    else:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline fill="none" stroke="#0b5cad" stroke-width="1.5" points="{path}"/>')
    parts.append("</svg>")
    return "".join(parts)
