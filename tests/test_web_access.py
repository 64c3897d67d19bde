"""Signing in to the pages and CSRF, in a real headless Chromium against a service with
an access file: the login, a change through a form with the page's CSRF token, the same
change with a forged or missing token refused, signing out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.services import free_port
from tests.test_access import Site
from tests.test_web import CHROMIUM, _need_browser


class Served:
    def __init__(self, tmp: Path) -> None:
        self.site = Site(tmp)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.site.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"

    def alert(self, alert_id: str) -> dict[str, Any]:
        auth = {"Authorization": "Bearer token-of-auditor-all"}
        found: dict[str, Any] = self.site.call("GET", f"/api/alerts/{alert_id}", auth).json()
        return found

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.site.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    _need_browser()
    s = Served(tmp_path_factory.mktemp("web-access"))
    yield s
    s.close()


@pytest.fixture
def page(served: Served) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        p = browser.new_context().new_page()
        yield p
        browser.close()


def sign_in(page: Any, served: Served, token: str, path: str) -> Any:
    response = page.goto(served.base + path)
    assert page.url.startswith(served.base + "/login?next="), page.url
    page.get_by_test_id("token").fill(token)
    with page.expect_navigation():
        response = page.get_by_role("button", name="Sign in").click()
    return response


def act(page: Any, alert_id: str, comment: str) -> None:
    row = page.locator(f"tr[data-alert='{alert_id}']")
    row.locator("input[name=comment]").fill(comment)
    row.get_by_role("button", name="Go").click()


def test_sign_in_then_a_form_with_its_csrf_token_acts(served: Served, page: Any) -> None:
    alert = served.site.subjects["in"]["alert_id"]
    sign_in(page, served, "token-of-authority-all", "/alerts?status=open")
    assert page.url == served.base + "/alerts?status=open"
    assert page.get_by_test_id("who").inner_text().startswith("authority-all")
    assert page.locator("[data-testid=open-mode]").count() == 0
    cookie = next(c for c in page.context.cookies() if c["name"] == "monitor_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script reads the token
    with page.expect_navigation():
        act(page, alert, "site visit booked")
    after = served.alert(alert)
    assert after["status"] == "acknowledged"
    assert after["history"][-1]["actor"] == "authority-all"
    assert after["history"][-1]["comment"] == "site visit booked"


def test_a_forged_or_missing_csrf_token_is_refused(served: Served, page: Any) -> None:
    alert = served.site.subjects["out"]["alert_id"]
    before = served.alert(alert)["status"]
    assert before == "open"
    sign_in(page, served, "token-of-authority-all", "/alerts?status=open")
    page.evaluate("document.querySelector('meta[name=csrf-token]').content = 'forged'")
    act(page, alert, "forged")
    result = page.locator(f"tr[data-alert='{alert}'] .result")
    result.wait_for(state="visible")
    page.wait_for_function(
        f"document.querySelector(\"tr[data-alert='{alert}'] .result\").textContent !== ''"
    )
    assert "CSRF token missing or wrong" in result.inner_text()
    # a request the page's script did not make (no token at all), with the cookie
    status = page.evaluate(
        "fetch('/api/alerts/" + alert + "/ack', {method: 'POST', headers: "
        "{'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)"
    )
    assert status == 403
    assert served.alert(alert)["status"] == before


def test_a_wrong_token_stays_on_the_login_page(served: Served, page: Any) -> None:
    page.goto(served.base + "/login")
    page.get_by_test_id("token").fill("not-a-token")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert "token not accepted" in page.get_by_test_id("login-error").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == "monitor_token"]


def test_roles_see_only_their_forms_and_sign_out(served: Served, page: Any) -> None:
    sign_in(page, served, "token-of-auditor-all", "/alerts")
    assert page.locator("form.act").count() == 0  # an auditor changes nothing
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.url.startswith(served.base + "/login")
    page.goto(served.base + "/alerts")
    assert page.url.startswith(served.base + "/login?next=")
