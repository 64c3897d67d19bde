"""A property-based fuzzer over the whole API (schemathesis, from the OpenAPI schema):
every operation, with valid and invalid input, with a token whose role may call it,
against a real state; no answer is a 5xx (503 for a dependency down aside), and every
4xx says what was wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Err

from monitor.api.guard import PUBLIC, ROUTE_RULES
from tests.test_access import PEOPLE, Site

# Examples per operation and mode: enough to hit every parameter's edges in a suite
# run (~1 min); bench/fuzz.py runs many more.
EXAMPLES = 20


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("fuzz"))
    yield s
    s.close()


def operations(site: Site) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", site.app)
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"the app's OpenAPI schema does not load: {result.err()}")
        found.append(result.ok())
    return found


def token_for(method: str, path: str) -> dict[str, str]:
    """The token of a role the route admits (scope `*`), so the fuzzer gets past the guard."""
    rule = ROUTE_RULES[(method, path)]
    if rule is PUBLIC:
        return {}
    who = next(p for p in PEOPLE if p.role in rule.roles and p.everywhere)
    return {"Authorization": f"Bearer {who.token}"}


def check(case: Any) -> None:
    # The token is always the right one (negative mode would mangle it): the guard is
    # test_access's; here every call reaches its route.
    case.headers = {**(case.headers or {}), **token_for(case.method.upper(), case.path)}
    response = case.call()
    assert response.status_code not in (401, 403, 429), response.text[:300]
    assert response.status_code < 500 or response.status_code == 503, (
        case.method,
        case.formatted_path,
        case.body if not isinstance(case.body, bytes) else case.body[:200],
        response.status_code,
        response.text[:500],
    )
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body.get("detail"), str) and body["detail"], response.text[:300]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_api_fail(site: Site, mode: GenerationMode) -> None:
    """Every operation, each with examples drawn from (or against) its schema."""
    ops = operations(site)
    assert len(ops) >= 20
    for op in ops:
        strategy = op.as_strategy(generation_mode=mode)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            check(case)

        run()


def test_the_fuzzer_reached_every_operation(site: Site) -> None:
    listed = {(m.upper(), p) for p, ops in site.app.openapi()["paths"].items() for m in ops}
    assert listed <= set(ROUTE_RULES), "an operation without a rule would not be fuzzed"
    assert len(listed) >= 20


def test_malformed_bodies_are_4xx(site: Site) -> None:
    """What a fuzzer may not reach: bodies that are not what the route takes at all."""
    op = {"Authorization": "Bearer token-of-operator-all"}
    util = {"Authorization": "Bearer token-of-utility-all"}
    auth = {"Authorization": "Bearer token-of-authority-all"}
    lot = site.subjects["in"]["lot"]
    cases: list[tuple[str, str, dict[str, str], dict[str, Any]]] = [
        (
            "POST",
            "/api/registry",
            op,
            {"content": b"\xff\xfe", "headers": {"content-type": "text/csv"}},
        ),
        (
            "POST",
            "/api/registry",
            op,
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/registry",
            op,
            {"content": b"a,b\n1,2", "headers": {"content-type": "image/png"}},
        ),
        (
            "POST",
            "/api/registry",
            op,
            {"content": b'meter_id,kind\n"E9,elec\n', "headers": {"content-type": "text/csv"}},
        ),
        # a bare carriage return inside a field (found by the fuzzer: was a 500)
        (
            "POST",
            "/api/registry",
            op,
            {"content": b"meter_id,kind\nE1\r;x,elec\n", "headers": {"content-type": "text/csv"}},
        ),
        ("GET", "/api/alerts/9223372036854775808", auth, {}),  # past SQLite's integer (was a 500)
        ("GET", "/api/audit?cursor=YWZ0ZXI6OTk5OTk5OTk5OTk5OTk5OTk5OTk5", auth, {}),
        (
            "POST",
            f"/api/lots/{lot}/sample-results",
            util,
            {"content": b"[{]", "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            f"/api/lots/{lot}/sample-results",
            util,
            {"content": b"meter,passed", "headers": {"content-type": "text/csv"}},
        ),
        (
            "POST",
            "/api/tariffs/V1/rollout",
            op,
            {"content": b"[]", "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/tariffs/V1/rollout",
            op,
            {"content": b"\x00\x01", "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/workorders",
            op,
            {
                "content": b"meter=E1",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
        ),
        (
            "POST",
            "/api/alerts/1/ack",
            auth,
            {"content": b'{"comment": 5}', "headers": {"content-type": "application/json"}},
        ),
        ("GET", "/api/alerts/not-a-number", auth, {}),
        ("GET", "/api/alerts?cursor=YWZ0ZXI6YWJj", auth, {}),  # after:abc, a foreign cursor
        ("GET", "/api/workorders?cursor=%%%", auth, {}),
        ("GET", "/api/meters/%00", op, {}),
        ("GET", "/api/meters/E1/history?start=yesterday", op, {}),
        ("POST", "/api/evaluate?as_of=2026-13-45", op, {}),
    ]
    for method, path, headers, kw in cases:
        extra: dict[str, str] = kw.pop("headers", {})
        r = site.call(method, path, {**headers, **extra}, **kw)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert r.json()["detail"], (path, r.text)


def test_an_oversized_body_is_refused_before_it_is_read(site: Site, tmp_path: Path) -> None:
    limit = site.ctx.settings.api.max_body_bytes
    op = {"Authorization": "Bearer token-of-operator-all", "content-type": "text/csv"}
    r = site.call("POST", "/api/registry", op, content=b"x" * (limit + 1))
    assert r.status_code == 413 and "api.max_body_bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536

    r = site.call("POST", "/api/registry", op, content=chunks())
    assert r.status_code == 413, r.text
