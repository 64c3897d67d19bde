"""Access control over the real application: every route × role × in/out of scope.

The table is generated from the application's route list: a route without a rule in
`ROUTE_RULES`, or without a case here saying how to call it in and out of scope, fails
the suite. Each call is made with a real token of a real access file over a service
state built from a simulated fleet.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitor.alerts.book import AlertBook, Condition
from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.api.guard import PUBLIC, ROUTE_RULES, Permission, route_table
from monitor.api.web import mount_web
from monitor.core.registry import parse_rows
from monitor.core.rulebook import load_rules
from monitor.core.schema import Record
from monitor.evaluation.runner import Evaluator
from monitor.evaluation.shadow import RulesDesk
from monitor.ingest.telemetry import parse_message
from monitor.ingest.worker import summarise_seen
from monitor.platform.access import load_access, token_hash
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.simulate import Fleet, FleetSpec
from monitor.store.audit import SqliteAudit
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState
from monitor.taxi.tariff import load_tariffs
from tests.helpers import received_live

REPO = Path(__file__).resolve().parent.parent
START = 1772294400000
DAYS = 4
SCOPE = "D02"  # the scoped tokens' district


@dataclass(frozen=True)
class Who:
    """A token of the test's access file."""

    name: str
    role: str
    scope: tuple[str, ...]

    @property
    def token(self) -> str:
        return f"token-of-{self.name}"

    @property
    def everywhere(self) -> bool:
        return "*" in self.scope


PEOPLE = [
    Who(f"{role}-{'all' if s == '*' else s}", role, (s,))
    for role, s in itertools.product(("authority", "utility", "operator", "auditor"), ("*", SCOPE))
]


def write_access_file(path: Path, people: list[Who]) -> None:
    tokens = [
        {"name": p.name, "role": p.role, "scope": list(p.scope), "sha256": token_hash(p.token)}
        for p in people
    ]
    path.write_text(yaml.safe_dump({"tokens": tokens}))


class Site:
    """A service state from a simulated fleet, an access file, the app over both."""

    def __init__(self, tmp: Path) -> None:
        fleet = Fleet(
            FleetSpec(start_ms=START, districts=2, meters_per_district=(10, 12), taxis=3, seed=7)
        )
        self.rows = fleet.registry_rows()
        self.state = SqliteState(tmp / "state.sqlite")
        self.store = EmbeddedStore(tmp / "telemetry.sqlite", Metrics())
        self.alerts = AlertBook(tmp / "state.sqlite", 2 * 86_400_000)
        self.audit = SqliteAudit(tmp / "state.sqlite", "test")
        self.state.upsert_meters(parse_rows(self.rows).rows)
        records = [
            r
            for m in fleet.messages(START, START + DAYS * 86_400_000)
            if isinstance(r := parse_message(m.topic, m.payload), Record)
        ]
        self.store.write(records)
        self.state.note_seen(summarise_seen(records, received_live(records)))
        tariffs = load_tariffs(REPO / "config" / "tariffs.yaml")
        book = load_rules(REPO / "config" / "rules.yaml")
        self.access_path = tmp / "access.yaml"
        write_access_file(self.access_path, PEOPLE)
        self.book = load_access(self.access_path)
        evaluator = Evaluator(self.store, self.state, tariffs=lambda: tariffs, alerts=self.alerts)
        # The rules desk on copies in the test's folder: promotion rewrites the rules file.
        rules_file = tmp / "config" / "rules.yaml"
        rules_file.parent.mkdir()
        shutil.copy(REPO / "config" / "rules.yaml", rules_file)
        desk = RulesDesk(rules_file, tmp, in_force=lambda: book)
        self.ctx = ApiContext(
            load_settings(tmp / "none", {}),
            self.state,
            self.store,
            Metrics(),
            lambda: True,
            evaluator,
            lambda: book,
            lambda t, p, r: None,
            self.alerts,
            rules_desk=desk,
            access=lambda: self.book,
            audit=self.audit,
        )
        self.app = build(self.ctx)
        self.client = TestClient(self.app)
        self.operator = {"Authorization": "Bearer token-of-operator-all"}
        self.call("POST", "/api/evaluate", self.operator).raise_for_status()
        self.subjects = self._subjects()

    def _subjects(self) -> dict[str, dict[str, str]]:
        elec = [r for r in self.rows if r["kind"] == "elec" and r["role"] != "master"]
        lots_by_district: dict[str, set[str]] = {}
        for r in elec:
            lots_by_district.setdefault(r["lot"], set()).add(r["district"])
        inside = next(r for r in elec if r["district"] == SCOPE)
        outside = next(r for r in elec if r["district"] != SCOPE)
        lot_in = next(lot for lot, ds in sorted(lots_by_district.items()) if SCOPE in ds)
        lot_out = next(lot for lot, ds in sorted(lots_by_district.items()) if SCOPE not in ds)
        for lot in (lot_in, lot_out):
            assert self.state.decision("lot", lot) is not None, lot
        taxi = next(r for r in self.rows if r["kind"] == "taxi")
        # one alert on each side of the scope
        at = self.state.latest_event_ts() or START
        conditions = [
            Condition(
                "test.access",
                "elec",
                r["meter_id"],
                "major",
                "test",
                at,
                {},
                meter=r["meter_id"],
                district=r["district"],
                lot=r["lot"],
            )
            for r in (inside, outside)
        ]
        self.alerts.observe(conditions, at, ("test.",))
        ids = {a["meter"]: str(a["id"]) for a in self.alerts.list(None, None, None, 0, 1000)}
        return {
            "in": {
                "meter": inside["meter_id"],
                "district": SCOPE,
                "lot": lot_in,
                "alert_id": ids[inside["meter_id"]],
                "taxi": taxi["meter_id"],
            },
            "out": {
                "meter": outside["meter_id"],
                "district": outside["district"],
                "lot": lot_out,
                "alert_id": ids[outside["meter_id"]],
                "taxi": taxi["meter_id"],
            },
        }

    def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
        response: httpx.Response = self.client.request(
            method, path, headers=headers, follow_redirects=False, **kw
        )
        return response

    def close(self) -> None:
        self.audit.close()
        self.alerts.close()
        self.state.close()
        self.store.close()


def build(ctx: ApiContext) -> FastAPI:
    app = create_app(ctx)
    mount_web(app, ctx)
    return app


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("access"))
    yield s
    s.close()


# -- how to call each route, in and out of scope -------------------------------------

_versions = itertools.count()


def _tariff_body(site: Site, subjects: dict[str, str]) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "config" / "tariffs.yaml").read_text())["SH-2022"]
    return {**json.loads(json.dumps(body, default=str)), "meters": [subjects["taxi"]]}


@dataclass(frozen=True)
class Case:
    """How to call a route: its path parameters and body from the subjects of one side
    of the scope; `scoped` says whether the route has a subject a scope can hide."""

    scoped: bool = True
    body: Callable[[Site, dict[str, str]], dict[str, Any]] = lambda s, x: {}
    params: Callable[[dict[str, str]], dict[str, str]] = lambda x: x
    # What an unknown (or out-of-scope) subject answers; 404 unless said otherwise.
    out_status: int = 404
    scoped_callers_see_nothing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _registry(site: Site, x: dict[str, str]) -> dict[str, Any]:
    row = next(r for r in site.rows if r["meter_id"] == x["meter"])
    return {"json": [{k: v for k, v in row.items() if v not in ("", None)}]}


def _samples(site: Site, x: dict[str, str]) -> dict[str, Any]:
    drawn = (site.state.decision("lot", x["lot"]) or {}).get("drawn") or [x["meter"]]
    return {"json": [{"meter": drawn[0], "error_pct": 0.1, "passed": True}]}


def _workorder(site: Site, x: dict[str, str]) -> dict[str, Any]:
    return {
        "json": {
            "meter": x["meter"],
            "from": "2026-03-01T00:00:00+08:00",
            "to": "2026-03-02T00:00:00+08:00",
            "reason": "seal replaced",
        }
    }


def _act(site: Site, x: dict[str, str]) -> dict[str, Any]:
    return {"json": {"comment": "checked"}}


def _rollout(site: Site, x: dict[str, str]) -> dict[str, Any]:
    return {"json": _tariff_body(site, x)}


def _new_version(x: dict[str, str]) -> dict[str, str]:
    return {**x, "version": f"T-{next(_versions)}"}


def _rolled_out(x: dict[str, str]) -> dict[str, str]:
    return {**x, "version": "SH-ACCESS"}


def _candidate_text() -> str:
    # A candidate that differs from the rules in force by its version only.
    text = (REPO / "config" / "rules.yaml").read_text(encoding="utf-8")
    return text.replace('version: "', 'version: "candidate-', 1)


def _upload(site: Site, x: dict[str, str]) -> dict[str, Any]:
    return {"content": _candidate_text()}


def _with_candidate(site: Site, x: dict[str, str]) -> dict[str, Any]:
    """Make sure a candidate is uploaded (by the operator) before the call."""
    r = site.call("PUT", "/api/rules/candidate", site.operator, **_upload(site, x))
    assert r.status_code == 200, r.text
    return {}


def _promote(site: Site, x: dict[str, str]) -> dict[str, Any]:
    _with_candidate(site, x)
    return {"json": {"actor": "ops", "comment": "reviewed"}}


def _in_region(x: dict[str, str]) -> dict[str, str]:
    return {**x, "region": "default"}


CASES: dict[tuple[str, str], Case] = {
    ("GET", "/healthz"): Case(scoped=False),
    ("GET", "/metrics"): Case(scoped=False),
    ("GET", "/docs"): Case(scoped=False),
    ("GET", "/docs/oauth2-redirect"): Case(scoped=False),
    ("GET", "/api/me"): Case(scoped=False),
    ("GET", "/api/meters"): Case(scoped=False),
    ("GET", "/api/meters/{meter}"): Case(),
    ("GET", "/api/meters/{meter}/history"): Case(),
    ("POST", "/api/registry"): Case(body=_registry, out_status=403),
    ("POST", "/api/evaluate"): Case(scoped=False),
    ("GET", "/api/districts"): Case(scoped=False),
    ("GET", "/api/districts/{district}"): Case(),
    ("GET", "/api/lots/{lot}"): Case(),
    ("POST", "/api/lots/{lot}/sample-results"): Case(body=_samples),
    ("POST", "/api/workorders"): Case(body=_workorder),
    ("GET", "/api/workorders"): Case(scoped=False),
    # taxi meters are outside every district scope: the scoped see no rollout at all
    ("POST", "/api/tariffs/{version}/rollout"): Case(
        body=_rollout, params=_new_version, out_status=422, scoped_callers_see_nothing=True
    ),
    ("GET", "/api/tariffs/{version}"): Case(params=_rolled_out, scoped_callers_see_nothing=True),
    ("GET", "/api/alerts"): Case(scoped=False),
    ("GET", "/api/alerts/{alert_id}"): Case(),
    ("POST", "/api/alerts/{alert_id}/ack"): Case(body=_act),
    ("POST", "/api/alerts/{alert_id}/resolve"): Case(body=_act),
    ("GET", "/api/audit"): Case(scoped=False),
    # Whole-fleet views and the rules: a scoped caller is refused them (403), so there is
    # no out-of-scope side to compare.
    ("GET", "/api/regions"): Case(scoped=False),
    ("GET", "/api/regions/{region}"): Case(scoped=False, params=_in_region),
    ("GET", "/api/rules"): Case(scoped=False),
    ("PUT", "/api/rules/candidate"): Case(scoped=False, body=_upload),
    ("DELETE", "/api/rules/candidate"): Case(scoped=False, body=_with_candidate),
    ("GET", "/api/rules/shadow"): Case(scoped=False, body=_with_candidate),
    ("POST", "/api/rules/promote"): Case(scoped=False, body=_promote),
    ("GET", "/api/rules/promotions"): Case(scoped=False),
    ("GET", "/api/impact"): Case(scoped=False),
    ("GET", "/api/impact/versions"): Case(scoped=False),
    ("GET", "/regions"): Case(scoped=False),
    ("GET", "/rules/shadow"): Case(scoped=False, body=_with_candidate),
    ("GET", "/impact"): Case(scoped=False),
    ("GET", "/impact.csv"): Case(scoped=False),
    ("GET", "/login"): Case(scoped=False),
    ("POST", "/login"): Case(scoped=False),
    ("POST", "/logout"): Case(scoped=False),
    ("GET", "/"): Case(scoped=False),
    ("GET", "/meters"): Case(scoped=False),
    ("GET", "/meters/{meter}"): Case(),
    ("GET", "/meters/{meter}/fares.csv"): Case(
        params=lambda x: {**x, "meter": x["taxi"]}, scoped_callers_see_nothing=True
    ),
    ("GET", "/districts"): Case(scoped=False),
    ("GET", "/districts/{district}"): Case(),
    ("GET", "/lots/{lot}"): Case(),
    ("GET", "/lots/{lot}/sample.csv"): Case(),
    ("GET", "/alerts"): Case(scoped=False),
    ("GET", "/tariffs"): Case(scoped=False),
    ("GET", "/audit"): Case(scoped=False),
}


def test_every_route_has_a_rule_and_a_case(site: Site) -> None:
    listed = route_table(site.app)
    assert len(listed) > 30
    assert [r for r in listed if r not in ROUTE_RULES] == [], "routes without an access rule"
    assert [r for r in listed if r not in CASES] == [], "routes without a case in this table"
    assert [r for r in ROUTE_RULES if r not in listed] == [], "rules for routes that are gone"


def _request(site: Site, route: tuple[str, str], side: str) -> tuple[str, str, dict[str, Any]]:
    method, template = route
    case = CASES[route]
    subjects = case.params(site.subjects[side])
    path = template.format(**{k: v for k, v in subjects.items()})
    kw = case.body(site, subjects)
    if route == ("POST", "/login"):
        kw = {"data": {"token": "token-of-auditor-all"}}
    if route == ("POST", "/logout"):
        kw = {"data": {"csrf": ""}}
    return method, path, kw


def _setup_rollout(site: Site) -> None:
    if site.state.tariff("SH-ACCESS") is None:
        body = _tariff_body(site, site.subjects["in"])
        r = site.call("POST", "/api/tariffs/SH-ACCESS/rollout", site.operator, json=body)
        assert r.status_code == 201, r.text


ALL_ROUTES = sorted(CASES)


@pytest.mark.parametrize("route", ALL_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_route_without_a_token(site: Site, route: tuple[str, str]) -> None:
    """No token: 401 on the API, the login page for pages; public routes answer."""
    _setup_rollout(site)
    method, path, kw = _request(site, route, "in")
    r = site.call(method, path, {}, **kw)
    if ROUTE_RULES[route] is PUBLIC:
        assert r.status_code < 400 or route == ("POST", "/login"), (r.status_code, r.text)
    elif path.startswith("/api/"):
        assert r.status_code == 401, r.text
        assert "token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    else:
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), r


@pytest.mark.parametrize("route", ALL_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_route_with_a_bad_token(site: Site, route: tuple[str, str]) -> None:
    if ROUTE_RULES[route] is PUBLIC:
        return
    _setup_rollout(site)
    method, path, kw = _request(site, route, "in")
    # from an address of its own: failures are limited per client
    client = TestClient(site.app, client=(f"10.9.{ALL_ROUTES.index(route)}.1", 4321))
    bad = {"Authorization": "Bearer not-a-token"}
    r = client.request(method, path, headers=bad, follow_redirects=False, **kw)
    if path.startswith("/api/"):
        assert r.status_code == 401, r.text
        assert "not accepted" in r.json()["detail"]
    else:  # a page sends the caller to sign in again
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), r


def expected(rule: Permission, who: Who) -> str:
    if rule is PUBLIC:
        return "allowed"
    if who.role not in rule.roles:
        return "role"
    if rule.whole_fleet and not who.everywhere:
        return "fleet"
    return "allowed"


@pytest.mark.parametrize("who", PEOPLE, ids=lambda w: w.name)
@pytest.mark.parametrize("route", ALL_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_route_role_and_scope(site: Site, route: tuple[str, str], who: Who) -> None:
    """Wrong role: 403 naming the role needed. Right role: in scope it works (no 401,
    403 or 404), out of scope it answers as an unknown subject would."""
    _setup_rollout(site)
    rule, case = ROUTE_RULES[route], CASES[route]
    headers = {"Authorization": f"Bearer {who.token}"}
    method, path, kw = _request(site, route, "in")
    r = site.call(method, path, headers, **kw)
    want = expected(rule, who)
    if want == "role":
        assert r.status_code == 403, (r.status_code, r.text)
        detail = r.json()["detail"]
        assert f"needs role {rule.needed()}" in detail and f"has role {who.role}" in detail
        return
    if want == "fleet":
        assert r.status_code == 403 and "scope '*'" in r.json()["detail"], r.text
        return
    if case.scoped_callers_see_nothing and not who.everywhere:
        assert r.status_code == case.out_status, (r.status_code, r.text)
        return
    assert r.status_code not in (401, 403, 404) and r.status_code < 500, (r.status_code, r.text)
    if not case.scoped or who.everywhere:
        return
    method, path, kw = _request(site, route, "out")
    out = site.call(method, path, headers, **kw)
    assert out.status_code == case.out_status, (out.status_code, out.text)


def test_out_of_scope_answers_exactly_as_unknown(site: Site) -> None:
    """The 404 body of an out-of-scope meter is the one of a meter that does not exist."""
    headers = {"Authorization": "Bearer token-of-utility-D02"}
    out = site.subjects["out"]["meter"]
    hidden = site.call("GET", f"/api/meters/{out}", headers).json()["detail"]
    unknown = site.call("GET", "/api/meters/NO-SUCH", headers).json()["detail"]
    assert hidden.replace(out, "X") == unknown.replace("NO-SUCH", "X")


@pytest.mark.parametrize(
    "path,field",
    [("/api/meters?limit=1000", "district"), ("/api/districts", "district")],
)
def test_lists_hold_only_the_scope(site: Site, path: str, field: str) -> None:
    everyone = site.call("GET", path, {"Authorization": "Bearer token-of-auditor-all"}).json()
    scoped = site.call("GET", path, {"Authorization": "Bearer token-of-utility-D02"}).json()
    assert {i[field] for i in everyone["items"]} >= {"D01", "D02"}
    assert scoped["items"] and {i[field] for i in scoped["items"]} == {SCOPE}


def test_scoped_alert_list_and_paging(site: Site) -> None:
    headers = {"Authorization": "Bearer token-of-authority-D02"}
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = site.call("GET", "/api/alerts", headers, params=params).json()
        seen += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    in_scope = {r["meter_id"] for r in site.rows if r["district"] == SCOPE}
    assert seen and all(a["meter"] in in_scope for a in seen if a.get("meter"))
    assert site.subjects["out"]["alert_id"] not in {str(a["id"]) for a in seen}


def test_utility_registry_rows_outside_its_districts_are_refused(site: Site) -> None:
    headers = {"Authorization": "Bearer token-of-utility-D02"}
    row = {"meter_id": "NEW-1", "kind": "elec", "district": "D01"}
    r = site.call("POST", "/api/registry", headers, json=[row])
    assert r.status_code == 403 and "outside your scope" in r.json()["detail"], r.text
    assert site.state.get_meter("NEW-1") is None
    # nor can it move a meter of D01 into its own district
    moved = {"meter_id": site.subjects["out"]["meter"], "kind": "elec", "district": SCOPE}
    r = site.call("POST", "/api/registry", headers, json=[moved])
    assert r.status_code == 403, r.text
    assert site.state.get_meter(moved["meter_id"]).district == "D01"  # type: ignore[union-attr]


def test_failed_tokens_are_rate_limited_per_client(tmp_path: Path, site: Site) -> None:
    app = build(site.ctx)
    limit = site.ctx.settings.api.auth_failures_per_minute
    bad = {"Authorization": "Bearer wrong"}
    one = TestClient(app, client=("10.0.0.1", 1234))
    other = TestClient(app, client=("10.0.0.2", 1234))
    codes = [one.get("/api/me", headers=bad).status_code for _ in range(limit)]
    assert codes == [401] * limit
    r = one.get("/api/me", headers=bad)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
    # even the right token waits: guessing stops, it does not go on in the background
    assert (
        one.get("/api/me", headers={"Authorization": "Bearer token-of-auditor-all"}).status_code
        == 429
    )
    assert (
        other.get("/api/me", headers={"Authorization": "Bearer token-of-auditor-all"}).status_code
        == 200
    )
    failures = [json.loads(r.body) for r in site.audit.rows(0, 100_000)]
    assert any(
        f["action"] == "auth.failed" and f["detail"]["client"] == "10.0.0.1" for f in failures
    )


def test_open_mode_lets_all_in_and_says_so(tmp_path: Path, site: Site) -> None:
    ctx = ApiContext(
        site.ctx.settings,
        site.state,
        site.store,
        Metrics(),
        lambda: True,
        site.ctx.evaluator,
        site.ctx.rules,
        None,
        site.alerts,
    )
    client = TestClient(build(ctx))
    me = client.get("/api/me").json()
    assert me["open_mode"] and me["role"] == "open"
    page = client.get("/meters")
    assert page.status_code == 200 and 'data-testid="open-mode"' in page.text


def test_a_change_from_another_site_is_refused(site: Site) -> None:
    headers = {**site.operator, "Origin": "http://evil.example"}
    r = site.call("POST", "/api/evaluate", headers)
    assert r.status_code == 403 and "another origin" in r.json()["detail"]


def test_the_access_file_is_hot_reloaded_and_a_bad_one_refused(tmp_path: Path) -> None:
    from monitor.core.yamlfile import ConfigError
    from monitor.platform.reload import HotFile

    path = tmp_path / "access.yaml"
    write_access_file(path, PEOPLE[:1])
    hot = HotFile(path, load_access)
    assert hot.current.authenticate(PEOPLE[0].token) is not None
    path.write_text(
        "tokens:\n  - name: x\n    role: king\n    scope: ['*']\n    sha256: " + "a" * 64 + "\n"
    )
    assert not hot.check()
    assert (
        hot.last_error is not None
        and "access.yaml:3" in hot.last_error
        and "role" in hot.last_error
    )
    assert hot.current.authenticate(PEOPLE[0].token) is not None  # the old one stays
    write_access_file(path, PEOPLE[1:2])
    assert hot.check()
    assert hot.current.authenticate(PEOPLE[0].token) is None
    assert hot.current.authenticate(PEOPLE[1].token) is not None
    with pytest.raises(ConfigError):
        load_access(tmp_path / "missing.yaml")


def test_the_service_refuses_a_public_address_without_an_access_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    env = {
        "MONITOR_CONFIG": str(REPO / "config"),
        "MONITOR_DATA_DIR": str(tmp_path / "data"),
        "MONITOR_HTTP": "0.0.0.0:1",
    }
    assert main(["run"], env) == 3
    err = capsys.readouterr().err
    assert "without an access file" in err and "MONITOR_ACCESS_FILE" in err
    assert not (tmp_path / "data").exists()  # refused before anything started
    # a named access file that is not there is refused too, on loopback as well
    env = {**env, "MONITOR_HTTP": "127.0.0.1:1", "MONITOR_ACCESS_FILE": str(tmp_path / "no.yaml")}
    assert main(["run"], env) == 3
    assert "does not exist" in capsys.readouterr().err


def test_changes_are_in_the_audit_log_with_who_made_them(site: Site) -> None:
    alert = site.subjects["in"]["alert_id"]
    authority = {"Authorization": "Bearer token-of-authority-all"}
    r = site.call("POST", f"/api/alerts/{alert}/resolve", authority, json={"comment": "fixed"})
    assert r.status_code in (200, 409), r.text
    _setup_rollout(site)
    done = {}
    for action, route, who in [
        ("registry.upsert", ("POST", "/api/registry"), "operator-all"),
        ("workorder.add", ("POST", "/api/workorders"), "operator-all"),
        ("samples.record", ("POST", "/api/lots/{lot}/sample-results"), "utility-all"),
    ]:
        method, path, kw = _request(site, route, "in")
        made = site.call(method, path, {"Authorization": f"Bearer token-of-{who}"}, **kw)
        assert made.status_code < 500 and made.status_code not in (401, 403, 404), made.text
        done[action] = made.status_code < 300
    records, cursor = [], None
    auditor = {"Authorization": "Bearer token-of-auditor-all"}
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = site.call("GET", "/api/audit", auditor, params=params).json()
        records += page["items"]
        if page["next"] is None:
            break
        cursor = page["next"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    acted = [r for r in records if r["action"] in ("alert.ack", "alert.resolve")]
    assert acted and all(r["role"] == "authority" for r in acted)
    mine = [r for r in acted if r["actor"] == "authority-all" and r["subject"] == f"alert:{alert}"]
    assert mine and {"before", "after", "comment"} <= set(mine[-1]["detail"])
    runs = [r for r in records if r["action"] == "evaluation.run"]
    assert runs and runs[0]["actor"] == "operator-all" and "meter_decisions" in runs[0]["detail"]
    assert done["registry.upsert"] and done["workorder.add"]
    assert any(r["action"] == "registry.upsert" and r["detail"]["changes"] for r in records)
    assert any(r["action"] == "workorder.add" and r["role"] == "operator" for r in records)
    assert any(r["action"] == "tariff.rollout" for r in records)
    # results are taken only for a lot with a drawn sample (else 409, nothing changed)
    sampled = any(r["action"] == "samples.record" and r["role"] == "utility" for r in records)
    assert sampled == done["samples.record"]
    # the alert's own history names the token, not a typed-in name
    history = site.call("GET", f"/api/alerts/{alert}", authority).json()["history"]
    assert any(step["actor"] == "authority-all" for step in history)


def test_decisions_carry_the_software_and_rules_version(site: Site) -> None:
    from monitor import __version__

    meter = site.subjects["in"]["meter"]
    body = site.call("GET", f"/api/meters/{meter}", site.operator).json()["decision"]
    assert body["software_version"] == __version__ and body["rules_version"]


def test_an_access_file_that_appears_ends_open_mode(tmp_path: Path) -> None:
    from monitor.platform.access import load_access_or_none
    from monitor.platform.reload import HotFile

    path = tmp_path / "access.yaml"
    hot = HotFile(path, load_access_or_none)
    assert hot.current is None  # open mode
    write_access_file(path, PEOPLE[:1])
    assert hot.check() and hot.current is not None
    path.unlink()
    assert not hot.check() and hot.current is not None  # the last one stays in force
