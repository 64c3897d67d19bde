"""Small server-rendered SVG charts: no JavaScript, no CDN, readable at any width."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, tzinfo
from html import escape
from typing import NamedTuple

from monitor.core.clock import DAY_MS, HOUR_MS

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 330, 56, 16, 30, 40
GREY, BLUE, AMBER, RED = "#8a96a3", "#0b5cad", "#9a6700", "#cf222e"


class Level(NamedTuple):
    """A horizontal reference line: its value, what it is, its colour."""

    value: float
    label: str
    colour: str = GREY
    left: bool = False  # label at the left end (where two lines lie close together)


def _levels(levels: Sequence[Level], gy: float, oy: float) -> list[str]:
    """Dashed reference lines, each labelled at its right end (data-level for tests)."""
    out = []
    for level in levels:
        y = gy * level.value + oy
        out.append(
            f'<g class="level" data-level="{level.value:.6g}"><title>{escape(level.label)}: '
            f"{level.value:.4g}</title>"
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{level.colour}" stroke-dasharray="5 4"/>'
            f'<text x="{PAD_L + 4 if level.left else W - PAD_R - 4}" y="{y - 4:.1f}" '
            f'font-size="10" text-anchor="{"start" if level.left else "end"}" '
            f'fill="{level.colour}">{escape(level.label)}</text></g>'
        )
    return out


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
        f'<text x="12" y="{PAD_T - 12}" font-size="11" fill="#5b6b7c">{escape(label)}</text>'
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


def _x_labels(xs: Sequence[float], texts: Sequence[str], gx: float, ox: float) -> list[str]:
    """Up to eight evenly spaced labels under the plot."""
    if not xs:
        return []
    every = max(1, math.ceil(len(xs) / 8))
    out = []
    for x, text in list(zip(xs, texts, strict=True))[::every]:
        px = gx * x + ox
        out.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{H - PAD_B}" y2="{H - PAD_B + 4}" '
            'stroke="#8a96a3"/>'
            f'<text x="{px:.1f}" y="{H - PAD_B + 17}" font-size="11" text-anchor="middle" '
            f'fill="#5b6b7c">{escape(text)}</text>'
        )
    return out


def _day_ticks(first_ms: int, last_ms: int, zone: tzinfo = UTC) -> tuple[list[float], list[str]]:
    """Local midnights between two instants, as (epoch ms, "MM-DD")."""
    first = datetime.fromtimestamp(first_ms / 1000, zone)
    day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    stamps: list[float] = []
    texts: list[str] = []
    while (ms := day.timestamp() * 1000) <= last_ms:
        if ms >= first_ms:
            stamps.append(ms)
            texts.append(day.strftime("%m-%d"))
        # the next local midnight, whatever the day's length (DST)
        day = datetime.fromtimestamp((ms + DAY_MS + 3 * HOUR_MS) / 1000, zone).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
    return stamps, texts


def series(
    points: Sequence[tuple[int, float]],
    label: str,
    max_points: int = 1500,
    dots: bool = False,
    levels: Sequence[Level] = (),
    zone: tzinfo = UTC,
) -> str:
    """A time series (epoch ms, value), thinned to `max_points` for the browser, with
    dashed reference `levels`; days are labelled at `zone`'s midnights."""
    if len(points) < 2:
        return '<p class="muted">Not enough data to draw.</p>'
    step = max(1, len(points) // max_points)
    pts = list(points[::step])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    y_lo, y_hi = min([*ys, *(v.value for v in levels)]), max([*ys, *(v.value for v in levels)])
    pad = (y_hi - y_lo) * 0.05 or 1.0
    parts, gy, oy = _frame(y_lo - pad, y_hi + pad, label)
    gx, ox = _scale(xs[0], xs[-1], PAD_L, W - PAD_R)
    coords = [(gx * x + ox, gy * y + oy) for x, y in zip(xs, ys, strict=True)]
    ticks, texts = _day_ticks(xs[0], xs[-1], zone)
    parts += _x_labels(ticks, texts, gx, ox)
    parts += _levels(levels, gy, oy)
    if dots:
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#0b5cad"/>' for x, y in coords]
    else:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline fill="none" stroke="#0b5cad" stroke-width="1.5" points="{path}"/>')
    parts.append("</svg>")
    return "".join(parts)


def daily(
    days: Sequence[tuple[date, float | None, str]], label: str, reference: float | None = None
) -> str:
    """One value per day as a line with dots (a gap where a day has none), each with a tooltip.

    days: (day, value or None, tooltip), oldest first; `reference` draws a dashed level.
    """
    known = [v for _, v, _ in days if v is not None]
    if len(known) < 2:
        return '<p class="muted">Not enough days to draw.</p>'
    levels = known + ([reference] if reference is not None else [])
    y_lo, y_hi = min(levels), max(levels)
    pad = (y_hi - y_lo) * 0.1 or 1.0
    parts, gy, oy = _frame(y_lo - pad, y_hi + pad, label)
    gx, ox = _scale(-0.5, len(days) - 0.5, PAD_L, W - PAD_R)
    parts += _x_labels(list(range(len(days))), [d.strftime("%m-%d") for d, _, _ in days], gx, ox)
    if reference is not None:
        y = gy * reference + oy
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#8a96a3" stroke-dasharray="5 4"/>'
        )
    run: list[str] = []
    for i, (_, v, _) in enumerate([*days, (date.min, None, "")]):
        if v is not None:
            run.append(f"{gx * i + ox:.1f},{gy * v + oy:.1f}")
            continue
        if len(run) > 1:
            parts.append(
                '<polyline fill="none" stroke="#0b5cad" stroke-width="1.5" '
                f'points="{" ".join(run)}"/>'
            )
        run = []
    for i, (_, v, tip) in enumerate(days):
        if v is not None:
            parts.append(
                f"<g><title>{escape(tip)}</title>"
                f'<circle class="day" cx="{gx * i + ox:.1f}" cy="{gy * v + oy:.1f}" r="3" '
                f'fill="#0b5cad" data-value="{v:.6g}"/></g>'
            )
    parts.append("</svg>")
    return "".join(parts)


def estimates(
    points: Sequence[tuple[int, float | None, float | None, float | None, str]],
    label: str,
    levels: Sequence[Level] = (),
    zone: tzinfo = UTC,
) -> str:
    """A meter's estimated error per pass over time: a dot with its interval where the
    estimate carried a judgement, a grey tick on the zero line where it did not.

    points: (epoch ms, error or None, low, high, state), oldest first.
    """
    known = [(t, e, lo, hi) for t, e, lo, hi, _ in points if e is not None]
    if len(points) < 2:
        return (
            '<p class="muted">The error is charted from the second day the meter is '
            "evaluated on.</p>"
        )
    values = [v for _, e, lo, hi in known for v in (e, lo, hi) if v is not None]
    values += [v.value for v in levels] + [0.0]
    y_lo, y_hi = min(values), max(values)
    pad = (y_hi - y_lo) * 0.08 or 1.0
    parts, gy, oy = _frame(y_lo - pad, y_hi + pad, label)
    first, last = points[0][0], points[-1][0]
    gx, ox = _scale(first, last, PAD_L + 8, W - PAD_R - 8)
    ticks, texts = _day_ticks(first, last, zone)
    parts += _x_labels(ticks, texts, gx, ox)
    parts += _levels(levels, gy, oy)
    for t, e, lo, hi, state in points:
        x = gx * t + ox
        when = datetime.fromtimestamp(t / 1000, zone).strftime("%Y-%m-%d %H:%M")
        if e is None:
            parts.append(
                f"<g><title>{when}: {escape(state)}, no judgeable estimate</title>"
                f'<rect class="unknown" x="{x - 1.5:.1f}" y="{gy * 0 + oy - 6:.1f}" width="3" '
                f'height="12" fill="{GREY}"/></g>'
            )
            continue
        low = lo if lo is not None else e
        high = hi if hi is not None else e
        tip = f"{when}: {e:+.2f} % ({low:+.2f} % to {high:+.2f} %), {state}"
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{gy * low + oy:.1f}" y2="{gy * high + oy:.1f}" '
            f'stroke="{BLUE}"/><circle class="estimate" cx="{x:.1f}" cy="{gy * e + oy:.1f}" '
            f'r="3" fill="{BLUE}" data-value="{e:.6g}"/></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
