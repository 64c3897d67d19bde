"""Metrics helpers: the per-minute ingest rate the overview page shows."""

from __future__ import annotations

import pytest

from monitor.platform.metrics import Metrics, RateSampler


def test_rate_between_samples_per_minute() -> None:
    rate = RateSampler()
    assert rate.sample(100, 10.0) is None  # nothing to compare with yet
    assert rate.sample(400, 40.0) == pytest.approx(600.0)  # 300 in 30 s
    assert rate.sample(400, 70.0) == 0.0
    assert rate.sample(10, 100.0) is None  # the counter restarted: no negative rate
    assert rate.sample(70, 130.0) == pytest.approx(120.0)


def test_received_total_sums_every_kind() -> None:
    m = Metrics()
    assert m.received_total() == 0
    m.received.labels(kind="elec").inc(5)
    m.received.labels(kind="taxi").inc(2)
    assert m.received_total() == 7
