"""The web pages in a real headless Chromium, against a service state built from a
simulated fleet: every page loads without console errors, shows the API's numbers,
and the inbox's acknowledge and the lot's sample-result form change the state."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
import yaml

from monitor.alerts.book import AlertBook
from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.api.web import mount_web
from monitor.api.web.present import Present
from monitor.core.explain import evidence_value, reason_sentence
from monitor.core.registry import parse_rows
from monitor.core.rulebook import load_rules
from monitor.core.schema import Record
from monitor.evaluation.runner import Evaluator
from monitor.evaluation.shadow import RulesDesk
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from monitor.taxi.tariff import load_tariffs
from tests.helpers import received_live
from tests.services import free_port
from tests.test_explain import REPR

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts" / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
START = 1772294400000
DAYS = 12


def _need_browser() -> None:
    if Path(CHROMIUM).exists():
        return
    msg = "chromium not installed (apt-get install chromium, or run scripts/test)"
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI is set, so this fails rather than skips", pytrace=False)
    pytest.skip(msg)


class Site:
    def __init__(self, tmp: Path) -> None:
        fleet = Fleet(
            FleetSpec(start_ms=START, districts=2, meters_per_district=(40, 50), taxis=12, seed=7)
        )
        self.fleet = fleet
        self.state = SqliteState(tmp / "state.sqlite")
        self.store = EmbeddedStore(tmp / "telemetry.sqlite", Metrics())
        self.alerts = AlertBook(tmp / "state.sqlite", 2 * 86_400_000)
        # Two regions: the electricity fleet's and the taxis' (districts and lots stay whole).
        rows = [
            {**r, "region": "east" if r["kind"] == "elec" else "west"}
            for r in fleet.registry_rows()
        ]
        self.state.upsert_meters(parse_rows(rows).rows)
        records = [
            r
            for m in fleet.messages(START, START + DAYS * 86_400_000)
            if isinstance(r := parse_message(m.topic, m.payload), Record)
        ]
        self.store.write(records)
        self.state.note_seen(summarise_seen(records, received_live(records)))
        tariffs = load_tariffs(REPO / "config" / "tariffs.yaml")
        book = load_rules(REPO / "config" / "rules.yaml")
        # A candidate beside the rules in force: a stricter class-2 limit, in shadow.
        self.desk = RulesDesk(tmp / "config" / "rules.yaml", tmp / "data", in_force=lambda: book)
        self.desk.upload(
            (REPO / "config" / "rules.yaml")
            .read_text(encoding="utf-8")
            .replace('in_service_limit_pct: {"2": 3.5', 'in_service_limit_pct: {"2": 1.0')
        )
        evaluator = Evaluator(
            self.store, self.state, tariffs=lambda: tariffs, alerts=self.alerts, shadow=self.desk
        )
        ctx = ApiContext(
            load_settings(tmp / "none", {}),
            self.state,
            self.store,
            Metrics(),
            lambda: True,
            evaluator,
            lambda: book,
            lambda t, p, r: None,
            self.alerts,
            rules_desk=self.desk,
        )
        app = create_app(ctx)
        mount_web(app, ctx)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        # Two earlier daily passes, then the latest: the meter pages chart an error history.
        for back in (2, 1):
            as_of = START + (DAYS - back) * 86_400_000
            self.api("POST", "/api/evaluate", params={"as_of": str(as_of)})
        self.api("POST", "/api/evaluate")
        body = yaml.safe_load((REPO / "config" / "tariffs.yaml").read_text())["SH-2022"]
        body = {**body, "effective_from": "2026-03-02T00:00:00+08:00"}
        self.api("POST", "/api/tariffs/SH-2026/rollout", content=json.dumps(body, default=str))

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, self.base + path, timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.alerts.close()
        self.state.close()
        self.store.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _need_browser()
    s = Site(tmp_path_factory.mktemp("web"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


class Page:
    """A browser page that fails the test on any console error."""

    def __init__(
        self, browser: Any, site: Site, path: str, width: int = 1280, status: int = 200
    ) -> None:
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        # A 404 page is asked for on purpose: its status line is not an error of the page.
        expected = f"status of {status}" if status != 200 else None
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if m.type == "error" and not (expected and expected in m.text)
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        response = self.page.goto(site.base + path)
        assert response is not None and response.status == status, (
            path,
            response and response.status,
        )

    def text(self, testid: str) -> str:
        return str(self.page.get_by_test_id(testid).inner_text()).strip()

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def done(self) -> None:
        assert self.errors == [], self.errors
        self.page.close()


def all_meters(site: Site, **params: str) -> list[dict[str, Any]]:
    return list(site.api("GET", "/api/meters", params={"limit": 1000, **params})["items"])


def test_overview_matches_the_api(site: Site, browser: Any) -> None:
    p = Page(browser, site, "/")
    assert int(p.text("kind-elec")) == len(all_meters(site, kind="elec"))
    assert int(p.text("kind-taxi")) == len(all_meters(site, kind="taxi"))
    open_alerts = site.api("GET", "/api/alerts", params={"status": "open", "limit": 1000})["items"]
    assert int(p.text("open-alerts")) == len(open_alerts)
    p.shot("overview")
    p.done()


def test_meter_list_and_meter_page(site: Site, browser: Any) -> None:
    suspects = all_meters(site, state="suspect", kind="elec")
    assert suspects
    listing = Page(browser, site, "/meters?kind=elec&state=suspect")
    rows = listing.page.locator("[data-testid=meters] tr").count() - 1
    assert rows == len(suspects)
    listing.shot("meters")
    listing.done()
    # the list says why and how far off, in words with units
    first = suspects[0]
    why = first["reason"]
    assert why is not None and first["error_pct"] is not None
    meter = first["meter_id"]
    again = Page(browser, site, "/meters?kind=elec&state=suspect")
    assert again.text(f"why-{meter}") == reason_sentence(why)
    assert again.text(f"error-{meter}") == evidence_value("error_pct", first["error_pct"])
    again.done()
    p = Page(browser, site, f"/meters/{meter}")
    decision = site.api("GET", f"/api/meters/{meter}")["decision"]
    assert p.text("decision") == decision["decision"]
    error = decision["evidence"]["error_pct"]
    assert f"error pct\n{evidence_value('error_pct', error)}" in p.text("evidence")
    # every reason in words with units, no Python repr anywhere in the decision
    for text in (p.text("reasons"), p.text("evidence")):
        assert not REPR.search(text), text
    # the register, then its estimated error on each of the three days it was evaluated,
    # against the class limit
    assert p.page.locator("[data-testid=main-chart] svg.chart").count() == 1
    dots = p.page.locator("[data-testid=error-chart] circle.estimate")
    unknown = p.page.locator("[data-testid=error-chart] rect.unknown")
    assert dots.count() >= 1 and dots.count() + unknown.count() == 3
    assert float(str(dots.last.get_attribute("data-value"))) == pytest.approx(error, abs=1e-3)
    limits = p.page.locator("[data-testid=error-chart] g.level")
    assert {float(str(g.get_attribute("data-level"))) for g in limits.all()} >= {3.5, -3.5}
    p.shot("meter-elec")
    p.done()
    taxi = next(m["meter_id"] for m in all_meters(site, kind="taxi") if m["decision"] == "replace")
    t = Page(browser, site, f"/meters/{taxi}")
    ratio = t.page.locator("[data-testid=main-chart] svg.chart")
    assert ratio.locator("circle").count() > 30  # one dot per trip
    # reference lines: 1 (GNSS), the fleet median and its guard band
    evidence = site.api("GET", f"/api/meters/{taxi}")["decision"]["evidence"]
    fleet = 1 + evidence["fleet_median_pct"] / 100
    levels = sorted(
        float(str(g.get_attribute("data-level"))) for g in ratio.locator("g.level").all()
    )
    assert levels == pytest.approx(sorted([1.0, fleet, fleet * 0.97, fleet * 1.005]), abs=1e-5)
    t.shot("meter-taxi")
    t.done()


def test_taxi_meter_page_lists_the_fare_mismatches(site: Site, browser: Any) -> None:
    """The overcharging meter's page lists as many wrong fares as its decision counted."""
    truth = site.fleet.truth()
    over = next(m for m, t in truth.items() if t["kind"] == "taxi" and t["overcharge"])
    evidence = site.api("GET", f"/api/meters/{over}")["decision"]["evidence"]
    assert evidence["fare_mismatches"] > 0
    p = Page(browser, site, f"/meters/{over}")
    assert int(p.text("fare-mismatches")) == evidence["fare_mismatches"]
    rows = p.page.locator("[data-testid=fares] tr")
    shown = min(25, evidence["fare_mismatches"])
    assert rows.count() - 1 >= shown
    # Wrong fares come first, each with the fare the tariff gives and a positive difference.
    first = rows.nth(1).locator("td")
    assert first.last.inner_text().startswith("fare")
    assert float(first.nth(9).inner_text()) > 0
    p.shot("meter-taxi-fares")
    summary = p.text("fare-summary")
    p.done()
    text = httpx.get(site.base + f"/meters/{over}/fares.csv").text
    rows_csv = list(csv.DictReader(io.StringIO(text)))
    assert len(rows_csv) == evidence["fare_checked"]
    assert sum(r["finding"] == "fare" for r in rows_csv) == evidence["fare_mismatches"]
    # Re-priced now, after the SH-2026 rollout that no simulated meter applied: every trip
    # past its deadline names the old version, and the page says so.
    stale = sum(r["version_mismatch"] == "True" for r in rows_csv)
    assert stale > 0
    assert f"{stale} priced under another tariff version" in summary
    clean = next(
        m
        for m, t in truth.items()
        if t["kind"] == "taxi" and not (t["overcharge"] or t["faults"] or t["stale_tariff"])
    )
    c = Page(browser, site, f"/meters/{clean}")
    assert int(c.text("fare-mismatches")) == 0
    c.done()


def test_district_page_matches_the_api(site: Site, browser: Any) -> None:
    body = site.api("GET", "/api/districts/D02")
    p = Page(browser, site, "/districts/D02?sort=error")
    assert p.text("line-loss") == f"{body['gates']['line_loss_pct']:.2f} %"
    rows = p.page.locator("[data-testid=district-meters] tr").count() - 1
    assert rows == len(body["meters"])
    evaluable = sum(1 for m in body["meters"] if m["evaluable"])
    assert p.page.locator("[data-testid=district-errors] svg.chart circle").count() == evaluable
    # Line loss over time: one dot per day the API has a loss for, tooltips with its value.
    days = [d for d in body["line_loss_daily"] if d["line_loss_pct"] is not None]
    assert len(days) >= DAYS - 1
    dots = p.page.locator("[data-testid=loss-chart] circle.day")
    assert dots.count() == len(days)
    last = days[-1]
    tip = str(dots.last.locator("xpath=..").locator("title").text_content())
    assert tip.startswith(f"{last['day']}: line loss {last['line_loss_pct']:.2f} %")
    assert p.page.locator("[data-testid=covered-chart] circle.day").count() == len(
        body["line_loss_daily"]
    )
    p.shot("district")
    p.done()


def test_district_list_matches_the_api(site: Site, browser: Any) -> None:
    lines = site.api("GET", "/api/districts")["items"]
    assert lines
    p = Page(browser, site, "/districts")
    assert p.page.locator("[data-testid=districts] tr").count() - 1 == len(lines)
    for line in lines:
        name = line["district"]
        assert p.text(f"evaluable-{name}") == f"{line['evaluable']} / {line['customers']}"
        assert p.text(f"gates-{name}") == ("passed" if line["gates_passed"] else "failed")
    p.shot("districts")
    p.done()


def test_lot_form_records_results_and_changes_the_decision(site: Site, browser: Any) -> None:
    lots = {m["lot"] for m in all_meters(site, kind="elec") if m["lot"]}
    lot = next(
        b
        for b in (site.api("GET", f"/api/lots/{x}") for x in sorted(lots))
        if b["decision"] == "resample"
    )
    p = Page(browser, site, f"/lots/{lot['id']}")
    assert int(p.text("sample-size")) == lot["plan"]["sample_size"]
    assert p.text("plan-name") == lot["plan"]["name"]
    assert float(p.text("pa-level")) == lot["oc"]["pa_at_aql"]
    csv_text = httpx.get(site.base + f"/lots/{lot['id']}/sample.csv").text
    assert len(csv_text.strip().splitlines()) == lot["plan"]["sample_size"] + 1
    p.shot("lot-before")
    lines = "meter,error_pct,passed\n" + "\n".join(f"{m},0.3,yes" for m in lot["drawn"])
    p.page.get_by_test_id("results").fill(lines)
    with p.page.expect_navigation():
        p.page.get_by_role("button", name="Record results").click()
    assert p.text("lot-decision") == "extend"
    assert site.api("GET", f"/api/lots/{lot['id']}")["decision"] == "extend"
    p.shot("lot-after")
    p.done()


def test_inbox_acknowledge_changes_the_alert(site: Site, browser: Any) -> None:
    first = site.api("GET", "/api/alerts", params={"status": "open", "limit": 1})["items"][0]
    p = Page(browser, site, "/alerts?status=open")
    row = p.page.locator(f"tr[data-alert='{first['id']}']")
    row.locator("input[name=actor]").fill("inspector.wang")
    row.locator("input[name=comment]").fill("site visit booked")
    with p.page.expect_navigation():
        row.get_by_role("button", name="Go").click()
    after = site.api("GET", f"/api/alerts/{first['id']}")
    assert after["status"] == "acknowledged"
    assert after["history"][-1]["actor"] == "inspector.wang"
    p.shot("alerts")
    p.done()
    acked = Page(browser, site, "/alerts?status=acknowledged")
    assert acked.text(f"status-{first['id']}") == "acknowledged"
    # both clocks, labelled, for every step (event time first, as the alert's own times)
    step = after["history"][-1]
    assert step["event_time"] >= after["last_seen"] and step["recorded_at"]
    acked.page.locator(f"tr[data-alert='{first['id']}'] summary").click()
    history = acked.text(f"history-{first['id']}")
    local = Present(ZoneInfo("Asia/Shanghai")).local  # the configured zone (the default)
    expected = f"event time {local(step['event_time'])} · recorded {local(step['recorded_at'])}"
    assert f"{expected} (wall clock)" in history
    acked.done()


def test_tariff_page_matches_the_api(site: Site, browser: Any) -> None:
    progress = site.api("GET", "/api/tariffs/SH-2026")
    p = Page(browser, site, "/tariffs")
    assert int(p.text("applied-SH-2026")) == progress["applied"]
    assert int(p.text("overdue-SH-2026")) == progress["overdue"]
    p.shot("tariffs")
    p.done()


def test_regions_side_by_side_and_the_lists_by_region(site: Site, browser: Any) -> None:
    regions = site.api("GET", "/api/regions")["items"]
    assert [r["region"] for r in regions] == ["east", "west"]
    p = Page(browser, site, "/regions")
    for r in regions:
        name = r["region"]
        assert int(p.text(f"meters-{name}")) == r["meters"]
        assert int(p.text(f"districts-{name}")) == r["districts"]
        for state, n in r["meter_states"].items():
            if state != "undecided":
                assert int(p.text(f"state-{state}-{name}")) == n
        for severity, n in r["open_alerts"].items():
            assert int(p.text(f"alerts-{severity}-{name}")) == n
    p.shot("regions")
    with p.page.expect_navigation():
        p.page.get_by_test_id("meters-west").click()
    rows = p.page.locator("[data-testid=meters] tr").count() - 1
    assert rows == len(all_meters(site, region="west")) == regions[1]["meters"]
    assert p.page.get_by_test_id("region").input_value() == "west"
    p.done()
    alerts = Page(browser, site, "/alerts?status=open&region=west")
    shown = alerts.page.locator("[data-testid=alerts] tr[data-alert]").count()
    assert shown == sum(regions[1]["open_alerts"].values())
    alerts.done()
    east = site.api("GET", "/api/districts", params={"region": "east"})["items"]
    assert len(east) == regions[0]["districts"] == 2
    assert site.api("GET", "/api/districts", params={"region": "west"})["items"] == []  # taxis
    districts = Page(browser, site, "/districts?region=east")
    assert districts.page.locator("[data-testid=districts] tr").count() - 1 == len(east)
    districts.done()


def test_shadow_page_shows_the_candidates_differences(site: Site, browser: Any) -> None:
    body = site.api("GET", "/api/rules/shadow", params={"limit": 1000})
    assert body["items"]
    p = Page(browser, site, "/rules/shadow")
    assert p.text("candidate") == body["candidate_version"]
    for change, n in body["counts"].items():
        assert int(p.text(f"count-{change}")) == n
    rows = p.page.locator("[data-testid=differences] tr[data-subject]")
    assert rows.count() == min(200, len(body["items"]))
    first = body["items"][0]
    row = p.page.locator(f"tr[data-subject='{first['id']}']")
    cells = row.locator("td")
    for i, side in ((1, first["current"]), (2, first["candidate"])):
        text = cells.nth(i).inner_text()
        assert side["decision"] in text
        assert all(r["rule"] in text for r in side["reasons"])
    p.shot("shadow")
    change = next(iter(body["counts"]))
    with p.page.expect_navigation():
        p.page.get_by_role("link", name=change, exact=True).click()
    shown = p.page.locator("[data-testid=differences] tr[data-subject]").count()
    assert shown == body["counts"][change]
    p.done()


def test_impact_page_and_csv_compare_two_versions(site: Site, browser: Any) -> None:
    # A lot whose sample the laboratory passed is extended (if the lot form's test has not
    # done it already): then the report has extensions to count.
    for lot in {m["lot"] for m in all_meters(site, kind="elec") if m["lot"]}:
        body = site.api("GET", f"/api/lots/{lot}")
        if body["decision"] == "resample" and body.get("drawn"):
            results = [{"meter": m, "error_pct": 0.3, "passed": True} for m in body["drawn"]]
            site.api("POST", f"/api/lots/{lot}/sample-results", json=results)
            break
    params = {"compare": "candidate", "start": "2020-01-01", "end": "2040-12-31"}
    body = site.api("GET", "/api/impact", params=params)
    assert body["report"]["replacements_avoided"] > 0
    p = Page(browser, site, "/impact?" + "&".join(f"{k}={v}" for k, v in params.items()))
    table = p.page.locator("[data-testid=impact] tr[data-figure]")
    shown = {
        table.nth(i).locator("td").first.inner_text(): [
            table.nth(i).locator("td").nth(j).inner_text() for j in (1, 2, 3)
        ]
        for i in range(table.count())
    }
    a, b = body["report"], body["compare"]
    assert shown["replacements avoided"] == [
        str(a["replacements_avoided"]),
        str(b["replacements_avoided"]),
        str(b["replacements_avoided"] - a["replacements_avoided"]),
    ]
    assert shown["meter-years gained"][:2] == [
        str(a["meter_years_gained"]),
        str(b["meter_years_gained"]),
    ]
    risk = "expected meters beyond the limit left in service"
    assert float(shown[risk][0]) == a["residual_risk"]["expected_beyond_limit"]
    p.shot("impact")
    href = p.page.get_by_test_id("csv").get_attribute("href")
    figures = table.count()
    p.done()
    rows = list(csv.reader(io.StringIO(httpx.get(site.base + str(href)).text)))
    assert rows[0] == ["figure", a["rules_version"], b["rules_version"], "difference"]
    by_figure = {r[0]: r[1:] for r in rows[1:]}
    assert by_figure["replacements avoided"][:2] == shown["replacements avoided"][:2]
    assert len(rows) - 1 == figures


def test_every_page_reads_on_a_tablet(site: Site, browser: Any) -> None:
    """At tablet portrait width (820 px) no page scrolls sideways; wide tables scroll in
    their own box, charts scale down, and the forms stay usable."""
    elec = all_meters(site, kind="elec", state="suspect")[0]
    taxi = next(m for m in all_meters(site, kind="taxi") if m["decision"] != "keep")
    pages = {
        "overview": "/",
        "meters": "/meters?kind=elec",
        "meter-elec": f"/meters/{elec['meter_id']}",
        "meter-taxi": f"/meters/{taxi['meter_id']}",
        "district": f"/districts/{elec['district']}",
        "districts": "/districts",
        "lot": f"/lots/{elec['lot']}",
        "alerts": "/alerts",
        "tariffs": "/tariffs",
        "regions": "/regions",
        "shadow": "/rules/shadow",
        "impact": "/impact?compare=candidate",
    }
    for name, path in pages.items():
        p = Page(browser, site, path, width=820)
        overflow = p.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (name, overflow)
        width = p.page.evaluate(
            "Math.max(...[...document.querySelectorAll('svg.chart')]"
            ".map(e => e.getBoundingClientRect().right), 0)"
        )
        assert width <= 820, (name, width)
        if name == "alerts":  # the inbox is worked on tablets: its table fits, no side-scroll
            inner = p.page.evaluate(
                "(() => { const w = document.querySelector('.wrap');"
                " return w.scrollWidth - w.clientWidth; })()"
            )
            assert inner <= 0, inner
        p.shot(f"{name}-tablet")
        p.done()


def test_a_stopped_meter_shows_the_current_that_proves_it(site: Site, browser: Any) -> None:
    stopped = next(m for m, t in site.fleet.truth().items() if "stopped" in t.get("faults", []))
    decision = site.api("GET", f"/api/meters/{stopped}")["decision"]
    assert decision["reasons"][0]["rule"] == "elec.function_failure.stopped"
    p = Page(browser, site, f"/meters/{stopped}")
    current = p.page.locator("[data-testid=current-chart] svg.chart")
    assert current.count() == 1 and current.locator("polyline").count() == 1
    assert "current, A" in str(current.get_attribute("aria-label"))
    assert "kWh unregistered" in p.text("reasons")
    p.shot("meter-stopped")
    p.done()


def test_the_district_page_never_plots_more_than_the_whole_day(site: Site, browser: Any) -> None:
    per_day = 96
    for district in ("D01", "D02"):
        body = site.api("GET", f"/api/districts/{district}")
        p = Page(browser, site, f"/districts/{district}")
        shares = [
            float(str(c.get_attribute("data-value")))
            for c in p.page.locator("[data-testid=covered-chart] circle.day").all()
        ]
        assert shares and max(shares) <= 100.0
        counted = [d["intervals"] for d in body["line_loss_daily"]]
        assert len(shares) == len(counted)
        # a failed data gate is "failed", never a meter's state
        gates = p.text("gates")
        assert gates == ("passed" if body["gates"]["passed"] else "failed"), gates
        assert "faulty" not in gates
        # The fleet's missed readings merge intervals across midnight, so a day counts more
        # intervals than it has: the case this page once plotted above 100 %.
        assert max(counted) > per_day, counted
        if max(counted) > per_day:
            over = counted.index(max(counted))
            circle = p.page.locator("[data-testid=covered-chart] circle.day").nth(over)
            tip = str(circle.locator("xpath=..").locator("title").text_content())
            assert "counts on the day it ends" in tip and shares[over] == 100.0
        p.done()


def test_unknown_pages_and_a_taxi_lot_answer_a_page(site: Site, browser: Any) -> None:
    p = Page(browser, site, "/no-such-page", status=404)
    assert p.text("error-status") == "Not found"
    p.done()
    taxi = all_meters(site, kind="taxi")[0]
    m = Page(browser, site, f"/meters/{taxi['meter_id']}")
    with m.page.expect_navigation():
        m.page.get_by_test_id("registry-lot").click()
    assert m.page.url.endswith(f"/meters?kind=taxi&lot={taxi['lot']}")
    assert m.page.locator("[data-testid=meters] tr").count() > 1
    m.done()
    lot = Page(browser, site, f"/lots/{taxi['lot']}", status=404)
    assert "has no decision" in lot.text("error-detail")
    assert lot.page.get_by_test_id("error-hint").get_attribute("href") == (
        "/meters?" + urlencode({"lot": taxi["lot"]})
    )
    lot.done()
    # the API keeps its JSON errors
    r = httpx.get(site.base + "/api/lots/NOPE")
    assert r.status_code == 404 and r.json()["detail"]
    r = httpx.get(site.base + "/no-such-page", headers={"accept": "application/json"})
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_api_docs_render_with_no_network_but_the_service(site: Site, browser: Any) -> None:
    page = browser.new_page()
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(site.base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    response = page.goto(site.base + "/docs")
    assert response is not None and response.status == 200
    title = page.locator(".swagger-ui .info .title")
    title.wait_for(timeout=20_000)
    assert "meter-state monitor" in title.inner_text()
    assert page.locator(".opblock").count() > 10  # the operations are listed
    assert outside == []
    page.close()


@pytest.mark.parametrize("width", [1280, 1366, 1400])
def test_the_inbox_fits_a_laptop_screen(site: Site, browser: Any, width: int) -> None:
    p = Page(browser, site, "/alerts?status=open", width=width)
    box = p.page.evaluate(
        "(() => { const w = document.querySelector('.wrap');"
        " return [w.scrollWidth - w.clientWidth, w.getBoundingClientRect().right]; })()"
    )
    assert box[0] <= 0, box
    # every control of the act column inside its cell, and the cell inside the box (the
    # table's rounded corners clip what sticks out, so a clipped control scrolls nowhere)
    overhang = p.page.evaluate(
        "[...document.querySelectorAll('form.act')].map(f => {"
        " const cell = f.closest('td').getBoundingClientRect();"
        " const right = Math.max(...[...f.querySelectorAll('input, select, button')]"
        "   .map(e => e.getBoundingClientRect().right));"
        " return [right - cell.right, cell.right]; })"
    )
    assert overhang and max(o[0] for o in overhang) <= 0, overhang
    assert max(o[1] for o in overhang) <= box[1], (overhang, box)
    # every alert message in words with units, times in the configured zone
    for message in p.page.locator("td.message").all():
        assert not REPR.search(message.inner_text().split("history")[0])
    assert "+08:00" in p.page.locator("td .stack time").first.inner_text()
    p.done()


def test_tariffs_page_shows_the_tariff_in_force_and_its_rates(site: Site, browser: Any) -> None:
    p = Page(browser, site, "/tariffs")
    latest = max(a["last_ts"] for a in all_meters(site, kind="taxi") if a["last_ts"] is not None)
    # SH-2026 (rolled out from 2026-03-02) is the newest tariff at the newest telemetry
    assert latest > "2026-03-02"
    row = p.page.get_by_test_id("tariff-SH-2026")
    assert row.get_by_test_id("in-force").count() == 1
    assert p.page.get_by_test_id("in-force").count() == 1
    text = p.text("tariff-SH-2022")
    assert "flag fall 14.00 CNY incl. 3 km, then 2.70 CNY/km" in text
    assert "23:00–05:00: flag fall 18.00 CNY" in text
    p.done()


def test_pages_show_shares_in_percent_and_times_in_the_zone(site: Site, browser: Any) -> None:
    lots = {m["lot"] for m in all_meters(site, kind="elec") if m["lot"]}
    lot = sorted(lots)[0]
    body = site.api("GET", f"/api/lots/{lot}")
    p = Page(browser, site, f"/lots/{lot}")
    indicators = p.text("indicators")
    assert f"faulty share\n{evidence_value('faulty_share', body['evidence']['faulty_share'])}" in (
        indicators
    )
    assert not REPR.search(indicators + p.text("reasons"))
    assert p.page.locator("time").first.get_attribute("title") == f"{body['as_of']} (UTC)"
    assert "+08:00" in p.page.locator("time").first.inner_text()
    p.done()
    o = Page(browser, site, "/")
    assert "times in Asia/Shanghai" in o.page.locator("header").inner_text()
    o.done()
