"""Time units shared by every domain (event time in epoch milliseconds)."""

from __future__ import annotations

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
