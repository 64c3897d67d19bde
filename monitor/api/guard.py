"""Who may call which route: one rule per route, checked before every request.

Every route of the application has an entry in `ROUTE_RULES` (method, path template) →
the permission it needs, or `PUBLIC`. A route without one is refused (fail closed),
and `tests/test_access.py` walks the application's route list so that a new route
without a rule fails the suite. Scope (which meters, districts, lots a caller sees)
is checked by the routes themselves through `api.scope`.

Authentication: `Authorization: Bearer <token>` (an API token of the access file or
an OIDC JWT), or the pages' login cookie. A cookie-authenticated change must carry
the page's CSRF token; any change from another site's page is refused (Origin).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from monitor.core.ports import AuditEntry, AuditLog
from monitor.platform.access import OPEN_MODE, AccessBook, Principal

log = logging.getLogger(__name__)

COOKIE = "monitor_token"
ANONYMOUS = Principal("anonymous", "none", frozenset())
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Permission:
    """What a route does, and the roles that may do it."""

    name: str
    roles: frozenset[str]
    # True: a caller scoped to part of the fleet may not (the action spans all of it).
    whole_fleet: bool = False

    def needed(self) -> str:
        names = sorted(self.roles)
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _perm(name: str, *roles: str, whole_fleet: bool = False) -> Permission:
    return Permission(name, frozenset(roles), whole_fleet)


PUBLIC = _perm("public")
SIGNED_IN = _perm("signed in", "authority", "utility", "operator", "auditor")
READ_FLEET = _perm("read meters, districts and lots", "authority", "utility", "operator", "auditor")
READ_ALERTS = _perm("read alerts", "authority", "operator", "auditor")
READ_TAXI = _perm("read work orders and rollouts", "authority", "operator", "auditor")
READ_AUDIT = _perm("read the audit log", "authority", "auditor", whole_fleet=True)
ACT_ALERTS = _perm("acknowledge and resolve alerts", "authority")
POST_SAMPLES = _perm("post lot sample results", "utility")
WRITE_REGISTRY = _perm("add or update registry rows", "operator", "utility")
WRITE_TAXI = _perm("work orders and tariff rollouts", "operator")
RUN_EVALUATION = _perm("run an evaluation", "operator", whole_fleet=True)
# Views over the whole fleet: a caller scoped to part of it would see the rest's counts.
READ_REGIONS = _perm(
    "read the cross-region view", "authority", "operator", "auditor", whole_fleet=True
)
READ_RULES = _perm(
    "read the rules, the candidate and its shadow decisions",
    "authority",
    "operator",
    "auditor",
    whole_fleet=True,
)
WRITE_RULES = _perm("upload, withdraw and promote candidate rules", "operator", whole_fleet=True)
READ_IMPACT = _perm(
    "read the policy impact report", "authority", "operator", "auditor", whole_fleet=True
)

ROUTE_RULES: dict[tuple[str, str], Permission] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/docs"): PUBLIC,  # the OpenAPI page (the schema holds no data)
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/api/me"): SIGNED_IN,
    ("GET", "/api/meters"): READ_FLEET,
    ("GET", "/api/meters/{meter}"): READ_FLEET,
    ("GET", "/api/meters/{meter}/history"): READ_FLEET,
    ("POST", "/api/registry"): WRITE_REGISTRY,
    ("POST", "/api/evaluate"): RUN_EVALUATION,
    ("GET", "/api/districts"): READ_FLEET,
    ("GET", "/api/districts/{district}"): READ_FLEET,
    ("GET", "/api/lots/{lot}"): READ_FLEET,
    ("POST", "/api/lots/{lot}/sample-results"): POST_SAMPLES,
    ("POST", "/api/workorders"): WRITE_TAXI,
    ("GET", "/api/workorders"): READ_TAXI,
    ("POST", "/api/tariffs/{version}/rollout"): WRITE_TAXI,
    ("GET", "/api/tariffs/{version}"): READ_TAXI,
    ("GET", "/api/alerts"): READ_ALERTS,
    ("GET", "/api/alerts/{alert_id}"): READ_ALERTS,
    ("POST", "/api/alerts/{alert_id}/ack"): ACT_ALERTS,
    ("POST", "/api/alerts/{alert_id}/resolve"): ACT_ALERTS,
    ("GET", "/api/audit"): READ_AUDIT,
    ("GET", "/api/regions"): READ_REGIONS,
    ("GET", "/api/regions/{region}"): READ_REGIONS,
    ("GET", "/api/rules"): READ_RULES,
    ("PUT", "/api/rules/candidate"): WRITE_RULES,
    ("DELETE", "/api/rules/candidate"): WRITE_RULES,
    ("GET", "/api/rules/shadow"): READ_RULES,
    ("POST", "/api/rules/promote"): WRITE_RULES,
    ("GET", "/api/rules/promotions"): READ_RULES,
    ("GET", "/api/impact"): READ_IMPACT,
    ("GET", "/api/impact/versions"): READ_IMPACT,
    # pages
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/"): READ_FLEET,
    ("GET", "/meters"): READ_FLEET,
    ("GET", "/meters/{meter}"): READ_FLEET,
    ("GET", "/meters/{meter}/fares.csv"): READ_FLEET,
    ("GET", "/districts"): READ_FLEET,
    ("GET", "/districts/{district}"): READ_FLEET,
    ("GET", "/lots/{lot}"): READ_FLEET,
    ("GET", "/lots/{lot}/sample.csv"): READ_FLEET,
    ("GET", "/alerts"): READ_ALERTS,
    ("GET", "/tariffs"): READ_TAXI,
    ("GET", "/audit"): READ_AUDIT,
    ("GET", "/regions"): READ_REGIONS,
    ("GET", "/rules/shadow"): READ_RULES,
    ("GET", "/impact"): READ_IMPACT,
    ("GET", "/impact.csv"): READ_IMPACT,
}


def rule_for(route: APIRoute, method: str) -> Permission | None:
    """The rule of one route and method; None when it has none (refused)."""
    return ROUTE_RULES.get((method, route.path_format))


def may(principal: Principal, permission: Permission) -> bool:
    """Whether a principal's role allows a permission (open mode allows everything)."""
    if principal.open_mode or permission is PUBLIC:
        return True
    if permission.roles and principal.role not in permission.roles:
        return False
    return not (permission.whole_fleet and not principal.everywhere)


def csrf_token(session: str) -> str:
    """The CSRF token of a login session: only a page of that session can know it."""
    return hmac.new(session.encode(), b"monitor csrf", hashlib.sha256).hexdigest()


class FailureLimiter:
    """At most `per_minute` authentication failures per client in any minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._seen.setdefault(client, deque())
        while times and times[0] <= now - 60:
            times.popleft()
        return times

    def blocked_for(self, client: str) -> float:
        """Seconds until the client may try again (0: it may now)."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if len(times) < self.per_minute:
                return 0.0
            return max(1.0, times[0] + 60 - now)

    def failed(self, client: str) -> bool:
        """Count a failure; True when it was the one that reached the limit."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            times.append(now)
            if len(self._seen) > 100_000:  # bounded memory under a spray of addresses
                self._seen = {k: v for k, v in self._seen.items() if v}
            return len(times) == self.per_minute


bearer = HTTPBearer(
    auto_error=False,
    description="an API token of the access file, or an OIDC JWT; not needed in open mode",
)


class Guard:
    """The check before every route: who is calling, may they, is the change same-site."""

    def __init__(
        self,
        access: Callable[[], AccessBook | None],
        audit: AuditLog | None,
        failures_per_minute: int,
    ) -> None:
        self._access = access
        self._audit = audit
        self.limiter = FailureLimiter(failures_per_minute)

    def open_mode(self) -> bool:
        return self._access() is None

    def check(self, request: Request, creds: HTTPAuthorizationCredentials | None) -> Principal:
        """The caller of a request, or the HTTPException that refuses it."""
        route = request.scope.get("route")
        rule = rule_for(route, request.method) if isinstance(route, APIRoute) else None
        if rule is None:
            raise HTTPException(403, f"no access rule for {request.method} {request.url.path}")
        if request.method in UNSAFE:
            refuse_cross_site(request)
        book = self._access()
        if book is None or rule is PUBLIC:
            request.state.principal = OPEN_MODE if book is None else ANONYMOUS
            return request.state.principal  # type: ignore[no-any-return]
        token, by_cookie = self._token(request, creds)
        principal = self.authenticate(request, book, token)
        if by_cookie and request.method in UNSAFE:
            check_csrf(request, token)
        if not may(principal, rule):
            raise HTTPException(403, refusal(request, rule, principal))
        request.state.principal = principal
        return principal

    @staticmethod
    def _token(request: Request, creds: HTTPAuthorizationCredentials | None) -> tuple[str, bool]:
        if request.headers.get("authorization"):
            if creds is None or creds.scheme.lower() != "bearer":
                raise HTTPException(
                    401,
                    "Authorization must be 'Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return creds.credentials, False
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return cookie, True
        raise HTTPException(
            401,
            "no token: send 'Authorization: Bearer <token>' (pages: sign in at /login)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def authenticate(self, request: Request, book: AccessBook, token: str) -> Principal:
        """The principal of a token, counting failures per client (429 past the limit)."""
        client = client_of(request)
        wait = self.limiter.blocked_for(client)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many failed sign-ins from {client}; try again in {wait:.0f} s",
                headers={"Retry-After": str(int(wait + 0.999))},
            )
        principal = book.authenticate(token)
        if principal is not None:
            return principal
        reached = self.limiter.failed(client)
        self.record_failure(request, client, reached)
        raise HTTPException(
            401, "token not accepted (unknown, revoked or expired)", {"WWW-Authenticate": "Bearer"}
        )

    def record_failure(self, request: Request, client: str, reached_limit: bool) -> None:
        """One audit record per failure up to the limit (a flood cannot fill the log)."""
        if self._audit is None:
            return
        detail: dict[str, Any] = {"client": client, "path": request.url.path}
        if reached_limit:
            detail["rate_limited"] = f"{self.limiter.per_minute} failures in a minute"
        self._audit.append(AuditEntry("unknown", "none", "auth.failed", f"client:{client}", detail))


def refusal(request: Request, rule: Permission, who: Principal) -> str:
    """The 403 message: what the route does, which role it needs, what the caller has."""
    what = f"{request.method} {request.url.path}"
    if who.role in rule.roles and rule.whole_fleet:
        return (
            f"{what} ({rule.name}) spans the whole fleet: it needs a token with scope '*'; "
            f"{who.name!r} is scoped to {sorted(who.scope)}"
        )
    return f"{what} ({rule.name}) needs role {rule.needed()}; {who.name!r} has role {who.role}"


def client_of(request: Request) -> str:
    """The client address failures are counted under."""
    return request.client.host if request.client else "unknown"


def refuse_cross_site(request: Request) -> None:
    """A change sent by another site's page is refused (CSRF, also in open mode)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = urlsplit(origin).netloc
        if host.lower() != request.headers.get("host", "").lower():
            raise HTTPException(403, f"request from another origin ({origin}) refused")


def check_csrf(request: Request, session: str) -> None:
    """A cookie-authenticated change carries the page's CSRF token (header or form field)."""
    sent = request.headers.get(CSRF_HEADER) or getattr(request.state, "csrf_form", None) or ""
    if not hmac.compare_digest(sent, csrf_token(session)):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def secure_cookie(request: Request) -> bool:
    """Secure everywhere but plain HTTP on a loopback address (a local test or demo)."""
    if request.url.scheme == "https":
        return True
    host = (request.url.hostname or "").strip("[]")
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def route_table(app: Any) -> list[tuple[str, str]]:
    """Every (method, path template) the application serves through a FastAPI route."""
    try:  # FastAPI ≥ 0.160 keeps included routers as one route each
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI lists every route flat
        contexts: Any = app.routes
    else:
        contexts = [c.original_route for c in iter_route_contexts(app.routes)]
    found = []
    for route in contexts:
        if isinstance(route, APIRoute):
            found += [(m, route.path_format) for m in sorted(route.methods or ())]
    return found


def unruled_routes(app: Any) -> list[tuple[str, str]]:
    """Routes with no access rule: refused at every call (the service will not start)."""
    return [r for r in route_table(app) if r not in ROUTE_RULES]
