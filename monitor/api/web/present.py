"""How the pages show what the API holds: times in the configured zone, reasons and
evidence in words with units (monitor.core.explain), rule names that wrap at dots.

The API and the stored JSON keep RFC 3339 UTC; a page shows the utility's local time
(`scheduling.timezone`), with the UTC instant in the element's tooltip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

from jinja2 import Environment
from markupsafe import Markup, escape

from monitor.core.clock import parse_ts
from monitor.core.explain import evidence_value, reason_sentence

# An RFC 3339 instant inside any text (reasons name times in UTC).
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})")


class Present:
    """The page filters for one zone."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone

    def local(self, instant: object) -> str:
        """An RFC 3339 instant (or epoch ms) as local time: 2026-03-12 23:59:57 +08:00."""
        if instant is None or instant == "":
            return "–"
        try:
            ms = parse_ts(instant if isinstance(instant, int) else str(instant))
        except (TypeError, ValueError):
            return str(instant)
        when = datetime.fromtimestamp(ms / 1000, self.zone).isoformat(timespec="seconds")
        return f"{when[:10]} {when[11:19]} {when[19:]}"  # 2026-03-12 23:59:57 +08:00

    def when(self, instant: object) -> Markup:
        """`local` in a <time> element whose tooltip is the UTC instant."""
        text = self.local(instant)
        if text == "–" or instant is None:
            return Markup('<span class="muted">–</span>')
        raw = escape(str(instant))
        day, _, clock = text.partition(" ")
        # It may wrap between the date and the time of day, nowhere else.
        parts = (
            f'<span class="nowrap">{escape(day)}</span> <span class="nowrap">{escape(clock)}</span>'
        )
        return Markup(f'<time datetime="{raw}" title="{raw} (UTC)">{parts}</time>')

    def text(self, value: object) -> str:
        """Text with every instant in it shown as local time."""
        return INSTANT.sub(lambda m: self.local(m.group(0)), str(value))

    def sentence(self, reason: Mapping[str, Any]) -> str:
        """A reason as a sentence with units, its times local."""
        return self.text(reason_sentence(reason))

    def evidence(self, value: Any, key: object) -> str:
        """One evidence field with its unit, its times local."""
        return evidence_value(str(key), value, self.local)

    def install(self, env: Environment) -> None:
        """Register the filters on a Jinja environment."""
        env.filters["breakable"] = breakable
        env.filters["when"] = self.when
        env.filters["local_text"] = self.text
        env.filters["sentence"] = self.sentence
        env.filters["evidence"] = self.evidence
        env.filters["share"] = share
        env.globals["zone_name"] = str(self.zone)


def breakable(name: object) -> Markup:
    """A dotted rule name that may wrap after each dot, and nowhere else."""
    return Markup(".<wbr>").join(escape(part) for part in str(name).split("."))


def share(value: object) -> str:
    """A share of 1 in percent (0.0526 → 5.3 %)."""
    return evidence_value("share", value)
