"""The pages for people in a real browser: Debian's Chromium, driven by Playwright,
against a real `leads-gql serve`, with every request to another host blocked (and
checked that none was tried), every Content-Security-Policy violation and script
error counted as a failure, and a screenshot of each page saved.

Screenshots go to tests/artifacts/ (or LEADS_TEST_ARTIFACTS). The browser is
/usr/bin/chromium (or LEADS_TEST_CHROMIUM); without one these tests are skipped,
saying so.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from tests.conftest import PG_ADMIN_URL, PG_SKIP, _pg_admin
from tests.server import Server, cli_env

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is missing")
Page = playwright.Page
expect = playwright.expect

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("LEADS_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(
    os.environ.get("LEADS_TEST_ARTIFACTS", Path(__file__).parent / "artifacts")
)
SECRET = "browser-secret-" + "b" * 40
HOSTILE = "<img src=x onerror=alert(1)>"
WIDE = {"width": 1360, "height": 900}
PHONE = {"width": 390, "height": 844}
# Browser-side timeouts (ms): generous for a loaded CI machine, far under a hang.
expect.set_options(timeout=10_000)


def token(
    scope: str = "leads:read leads:delete", *, ttl: int = 3600, **claims: Any
) -> str:
    now = int(time.time())
    body = {"sub": "operator", "scope": scope, "iat": now - 60, "exp": now + ttl}
    return jwt.encode({**body, **claims}, SECRET, algorithm="HS256")


def writer() -> dict[str, str]:
    return {"Authorization": f"Bearer {token('leads:write')}"}


def _admin(sql: str, url: str | None = None) -> None:
    """A statement on the PostgreSQL server, from another thread: Playwright's
    synchronous API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _pg_admin(sql, url)).result()


# The PostgreSQL database of each server, by its URL.
DATABASES: dict[str, str] = {}


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("browser")
    database = None
    if request.param == "sqlite":
        url = f"sqlite:///{cwd / 'leads.db'}"
    else:
        if not PG_ADMIN_URL:
            pytest.skip(PG_SKIP)
        database = f"leads_test_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{database}"')
        url = f"{PG_ADMIN_URL.rpartition('/')[0]}/{database}"
    env = cli_env(
        LEADS_DATABASE_URL=url,
        LEADS_JWT_SECRET=SECRET,
        LEADS_DB_POOL_SIZE="4",
        LEADS_DB_MAX_OVERFLOW="4",
    )
    try:
        with Server(cwd, env, "--log-level", "warning") as running:
            DATABASES[running.url] = url
            yield running
    finally:
        if database is not None:
            _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser at {CHROMIUM}: `apt-get install -y chromium` "
            "(or set LEADS_TEST_CHROMIUM) to run the browser tests"
        )
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            # No name resolves but the server's address: a request to any other
            # host fails in the browser itself, WebSockets included.
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Visit:
    """A page in a fresh browser context, and what it did that it must not."""

    page: Page
    server: Server
    elsewhere: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    graphql: list[dict[str, Any]] = field(default_factory=list)

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=path, full_page=full_page)
        print(f"screenshot: {path}")  # noqa: T201
        return path


@pytest.fixture
def visit(browser: Any, server: Server) -> Iterator[Any]:
    contexts = []
    visits: list[Visit] = []

    def open_page(viewport: dict[str, int] = WIDE) -> Visit:
        context = browser.new_context(
            viewport=viewport, accept_downloads=True, base_url=server.url
        )
        contexts.append(context)
        page = context.new_page()
        here = urlsplit(server.url).netloc
        seen = Visit(page, server)
        visits.append(seen)

        def only_here(route: Any) -> None:
            if urlsplit(
                route.request.url
            ).netloc == here or route.request.url.startswith(("blob:", "data:")):
                route.continue_()
            else:
                seen.elsewhere.append(route.request.url)
                route.abort("blockedbyclient")

        context.route("**/*", only_here)
        page.on(
            "websocket",
            lambda ws: (
                None
                if urlsplit(ws.url).netloc == here
                else seen.elsewhere.append(ws.url)
            ),
        )
        # A blocked inline script or style, or an eval: the policy or the page is
        # wrong. The listener is the browser's, not the page's.
        context.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => "
            "console.error('CSP violation: ' + e.violatedDirective + ' ' + "
            "e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber))"
        )
        page.on(
            "console",
            lambda m: (
                seen.problems.append(m.text) if "CSP violation" in m.text else None
            ),
        )
        page.on("pageerror", lambda error: seen.problems.append(f"page error: {error}"))
        page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))

        def graphql_request(request: Any) -> None:
            if request.url.endswith("/graphql") and request.method == "POST":
                seen.graphql.append(json.loads(request.post_data or "{}"))

        page.on("request", graphql_request)
        return seen

    yield open_page
    for seen in visits:
        assert seen.elsewhere == [], "requests to other hosts"
        assert seen.problems == [], "policy violations or script errors"
        assert seen.dialogs == [], "alert/confirm/prompt dialogs"
    for context in contexts:
        context.close()


def create(server: Server, flow: str, **fields: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/leads", json={"chatflowid": flow, **fields}, headers=writer()
    )
    assert answer.status_code == 200, answer.text
    lead: dict[str, Any] = answer.json()
    return lead


def seed(server: Server, flow: str, count: int) -> list[dict[str, Any]]:
    """`count` leads, a day apart, the newest an hour ago; newest first."""
    start = datetime.now(UTC) - timedelta(hours=1)
    leads = []
    with httpx.Client(base_url=server.url, headers=writer()) as client:
        for n in range(count):
            body = {
                "chatflowid": flow,
                "name": f"Lead {n:02d}",
                "email": f"lead{n:02d}@example.com",
                "phone": f"+44 20 7946 {n:04d}",
                "chatId": f"chat-{n:02d}",
                "createdDate": (start - timedelta(days=n)).isoformat(),
            }
            answer = client.post("/leads", json=body)
            assert answer.status_code == 200, answer.text
            leads.append(answer.json())
    return leads


def sign_in(seen: Visit, flow: str, bearer: str | None = None) -> Page:
    page = seen.page
    page.goto("/")
    page.get_by_label("Paste a token").fill(bearer or token())
    page.get_by_role("button", name="Use token").click()
    page.get_by_label("Chat flow id").fill(flow)
    page.get_by_role("button", name="Show leads").click()
    return page


def names(page: Page) -> list[str]:
    return page.locator("#rows td.name").all_inner_texts()


def test_graphiql_runs_queries_and_subscriptions_offline(
    visit: Any, server: Server
) -> None:
    flow = str(uuid.uuid4())
    seed(server, flow, 2)
    seen = visit()
    page = seen.page
    answer = page.goto("/graphql")
    assert answer is not None and answer.status == 200
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert not re.search(r"https?:|wss?:|\*|unsafe", csp)
    expect(page.locator(".graphiql-container")).to_be_visible()
    # A new user's steps: the token in the Headers tab, the flow in Variables.
    headers = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden)")
    expect(headers).to_contain_text("Bearer <token>")
    headers.locator(".CodeMirror").click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(json.dumps({"Authorization": f"Bearer {token()}"}))
    page.get_by_role("button", name="Variables", exact=True).click()
    variables = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden)")
    expect(variables).to_contain_text("chatflowid")
    variables.locator(".CodeMirror").click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.insert_text(json.dumps({"chatflowid": flow}))
    # The document holds three operations: Run asks which.
    page.locator("button.graphiql-execute-button").click()
    page.get_by_role("menuitem", name="LeadsOfAFlow").click()
    response = page.locator(".graphiql-response")
    expect(response).to_contain_text('"leadsByChatflow"')
    expect(response).to_contain_text("Lead 00")
    expect(response).to_contain_text("Lead 01")
    # The schema loads once a token is there (docs and completion work).
    page.get_by_role("button", name="Show Documentation Explorer").click()
    expect(page.locator(".graphiql-doc-explorer")).to_contain_text("subscription")
    seen.screenshot("graphiql.png")

    # The subscription, over the same origin's WebSocket, with the same token.
    page.locator("button.graphiql-execute-button").click()
    page.get_by_role("menuitem", name="NewLeads").click()
    expect(page.locator("button.graphiql-execute-button")).to_have_attribute(
        "aria-label", re.compile("Stop", re.I)
    )
    _created_while_watched(page, server, flow, response)
    page.locator("button.graphiql-execute-button").click()  # stop
    # GraphiQL keeps its tabs and history, never the token.
    stored = page.evaluate("() => JSON.stringify(window.localStorage)")
    assert "eyJ" not in stored and "Bearer" not in stored


def _created_while_watched(page: Page, server: Server, flow: str, shown: Any) -> None:
    """A lead created through REST until one shows: the subscription may take a
    moment to start on the server after its subscribe message."""
    deadline = time.monotonic() + 10
    n = 0
    while True:
        n += 1
        create(server, flow, name=f"Live {n}")
        try:
            expect(shown).to_contain_text('"leadCreated"', timeout=1_000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    expect(shown).to_contain_text(re.compile(r"Live \d"))


def test_leads_page_lists_searches_pages_and_filters(
    visit: Any, server: Server
) -> None:
    flow = str(uuid.uuid4())
    leads = seed(server, flow, 30)
    create(server, flow, name="Ada Lovelace", createdDate="2020-01-01T12:00:00Z")
    seen = visit()
    page = sign_in(seen, flow)
    summary = page.locator("#summary")
    expect(summary).to_have_text("31 leads · showing 1–31")
    page.get_by_label("Per page").select_option("25")
    expect(summary).to_have_text("31 leads · showing 1–25")
    assert names(page) == [lead["name"] for lead in leads[:25]]  # newest first
    expect(page.get_by_role("button", name="Newer")).to_be_disabled()
    expect(page.locator("#live")).to_contain_text("Live")

    # Forward and back, by cursors.
    page.get_by_role("button", name="Older").click()
    expect(summary).to_have_text("31 leads · showing 26–31")
    assert names(page) == [lead["name"] for lead in leads[25:]] + ["Ada Lovelace"]
    expect(page.get_by_role("button", name="Older")).to_be_disabled()
    page.get_by_role("button", name="Newer").click()
    expect(summary).to_have_text("31 leads · showing 1–25")
    assert names(page)[0] == "Lead 00"
    assert seen.graphql[-1]["variables"]["before"]  # `last`/`before`

    # Search runs on the server: the page sends `search`.
    page.get_by_label("Search").fill("LOVELACE")
    expect(summary).to_have_text("1 lead match · showing 1–1")
    assert names(page) == ["Ada Lovelace"]
    assert seen.graphql[-1]["variables"]["search"] == "LOVELACE"
    page.get_by_label("Search").fill("no such person")
    expect(page.locator("#empty")).to_have_text("No leads match these filters.")
    page.get_by_role("button", name="Clear filters").click()
    expect(summary).to_have_text("31 leads · showing 1–25")

    # A date range: the whole of each day, in the browser's time zone.
    page.get_by_label("Received from").fill("2019-12-31")
    page.get_by_label("Received until").fill("2020-01-01")
    expect(summary).to_have_text("1 lead match · showing 1–1")
    assert names(page) == ["Ada Lovelace"]
    sent = seen.graphql[-1]["variables"]
    assert sent["createdAfter"] < "2020-01-01T12:00:00" < sent["createdBefore"]
    page.get_by_role("button", name="Clear filters").click()
    expect(summary).to_have_text("31 leads · showing 1–25")

    # Kept in the tab's session storage: never in the URL, never in a cookie.
    assert page.context.cookies() == []
    assert "eyJ" not in page.url and "?" not in page.url
    flow_kept = page.evaluate("() => sessionStorage.getItem('leads-gql.chatflow')")
    assert flow_kept == flow
    page.reload()
    expect(summary).to_have_text("31 leads · showing 1–25")  # same tab, same session
    seen.screenshot("leads-page.png")

    phone = visit(PHONE)
    sign_in(phone, flow)  # a new tab: a new session, the default page size
    expect(phone.page.locator("#summary")).to_have_text("31 leads · showing 1–31")
    width = phone.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing wider than the phone
    phone.screenshot("leads-page-phone.png")


def test_a_lead_created_through_rest_appears_while_the_page_is_open(
    visit: Any, server: Server
) -> None:
    flow = str(uuid.uuid4())
    seed(server, flow, 3)
    page = sign_in(visit(), flow)
    expect(page.locator("#summary")).to_have_text("3 leads · showing 1–3")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    # "Live" is shown once the server acknowledged the socket and the subscribe
    # went out; the server starts the subscription a moment later.
    page.wait_for_timeout(500)
    arrived = create(server, flow, name="Grace Hopper", email="grace@example.com")
    first = page.locator("#rows tr").first
    expect(first.locator("td.name")).to_have_text("Grace Hopper")
    expect(first).to_have_attribute("data-id", arrived["id"])
    expect(page.locator("#summary")).to_have_text("4 leads · showing 1–4")
    # Another flow's lead does not show.
    create(server, str(uuid.uuid4()), name="Elsewhere")
    create(server, flow, name="Katherine Johnson")
    expect(first.locator("td.name")).to_have_text("Katherine Johnson")
    assert "Elsewhere" not in names(page)
    assert names(page).count("Grace Hopper") == 1


def test_export_downloads_the_flow_as_csv(visit: Any, server: Server) -> None:
    flow = str(uuid.uuid4())
    leads = seed(server, flow, 3)
    page = sign_in(visit(), flow)
    expect(page.locator("#summary")).to_have_text("3 leads · showing 1–3")
    with page.expect_download() as started:
        page.get_by_role("button", name="Export CSV").click()
    download = started.value
    assert download.suggested_filename == f"{flow}-leads.csv"
    path = download.path()
    assert path is not None
    text = Path(path).read_bytes().decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == [
        "id",
        "name",
        "email",
        "phone",
        "chatflowid",
        "chatId",
        "createdDate",
    ]
    assert [row[1] for row in rows[1:]] == [lead["name"] for lead in reversed(leads)]
    assert text.endswith("\r\n")
    expect(page.locator("#message")).to_contain_text(f"Downloaded {flow}-leads.csv")


def test_export_waits_for_a_flow_to_have_leads(visit: Any, server: Server) -> None:
    flow = str(uuid.uuid4())
    seen = visit()
    page = sign_in(seen, flow)
    expect(page.locator("#empty")).to_contain_text("No leads in this chat flow yet")
    export = page.get_by_role("button", name="Export CSV")
    expect(export).to_be_disabled()
    seen.screenshot("leads-page-empty.png")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.wait_for_timeout(500)  # the server starts the subscription
    create(server, flow, name="Grace Hopper")
    expect(page.locator("#rows td.name")).to_have_text("Grace Hopper")
    expect(export).to_be_enabled()


def test_delete_asks_first_and_only_where_the_token_may(
    visit: Any, server: Server
) -> None:
    flow = str(uuid.uuid4())
    leads = seed(server, flow, 3)
    target = leads[1]

    reader = sign_in(visit(), flow, token("leads:read"))
    expect(reader.locator("#summary")).to_have_text("3 leads · showing 1–3")
    expect(reader.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)

    page = sign_in(visit(), flow)
    expect(page.locator("#summary")).to_have_text("3 leads · showing 1–3")
    delete = page.get_by_role("button", name=f"Delete the lead of {target['name']}")
    dialog = page.get_by_role("dialog", name="Delete this lead?")
    # Escape cancels, and the keyboard is back where it was.
    delete.click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(target["name"])
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(delete).to_be_focused()
    assert names(page) == [lead["name"] for lead in leads]
    # Then for real, from the keyboard.
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    page.get_by_role("button", name="Delete lead").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#summary")).to_have_text("2 leads · showing 1–2")
    assert names(page) == [leads[0]["name"], leads[2]["name"]]
    expect(page.locator("#message")).to_have_text(
        f"Deleted the lead of {target['name']}."
    )
    left = httpx.get(
        f"{server.url}/leads/{flow}",
        headers={"Authorization": f"Bearer {token('leads:read')}"},
    ).json()
    assert [lead["id"] for lead in left] == [leads[2]["id"], leads[0]["id"]]


def test_an_expired_or_refused_token_asks_for_a_new_one(
    visit: Any, server: Server
) -> None:
    flow = str(uuid.uuid4())
    seed(server, flow, 1)
    # A token already expired when pasted is refused at once, before any request.
    seen = visit()
    page = seen.page
    page.goto("/")
    page.get_by_label("Paste a token").fill(token(ttl=-120))
    page.get_by_role("button", name="Use token").click()
    alert = page.locator("#token-error")
    expect(alert).to_contain_text("Your token expired")
    expect(alert).to_contain_text("Paste a new one")
    seen.screenshot("leads-page-expired-token.png")
    expect(page.get_by_label("Paste a token")).to_be_focused()
    expect(page.locator("#browser")).to_be_hidden()
    assert page.evaluate("() => sessionStorage.getItem('leads-gql.token')") is None

    # A token that expires while the page is open: the server closes the live
    # socket (4403), and the page says so.
    page.get_by_label("Paste a token").fill(token(ttl=3))
    page.get_by_role("button", name="Use token").click()
    page.get_by_label("Chat flow id").fill(flow)
    page.get_by_role("button", name="Show leads").click()
    expect(page.locator("#summary")).to_have_text("1 lead · showing 1–1")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(alert).to_contain_text("Your token expired", timeout=15_000)
    expect(page.locator("#browser")).to_be_hidden()

    forged = jwt.encode(
        {"sub": "x", "scope": "leads:read", "exp": int(time.time()) + 600},
        "another-secret-" + "x" * 40,
        algorithm="HS256",
    )
    page.get_by_label("Paste a token").fill(forged)
    page.get_by_role("button", name="Use token").click()  # the flow is remembered
    expect(alert).to_contain_text("The server refused this token")
    # A good token again: the leads are back.
    page.get_by_label("Paste a token").fill(token())
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#summary")).to_have_text("1 lead · showing 1–1")


def test_a_hostile_name_is_shown_as_text(visit: Any, server: Server) -> None:
    flow = str(uuid.uuid4())
    create(server, flow, name=HOSTILE, email="mallory@example.com", chatId=HOSTILE)
    seen = visit()
    page = sign_in(seen, flow)
    name = page.locator("#rows td.name")
    expect(name).to_have_text(HOSTILE)
    expect(page.locator("#rows td.chat")).to_have_text(HOSTILE)
    assert page.locator("#rows img").count() == 0
    page.get_by_role("button", name=f"Delete the lead of {HOSTILE}").click()
    expect(page.locator("#confirm-text")).to_contain_text(HOSTILE)
    assert page.locator("#confirm img").count() == 0
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)  # an onerror would have run by now
    assert seen.dialogs == []


@pytest.mark.parametrize(
    "server", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_page_reconnects_and_catches_up_after_a_lost_feed(
    visit: Any, server: Server
) -> None:
    """The server closes live sockets with 1011 when it loses its LISTEN
    connection; the page reconnects and fetches what it may have missed."""
    flow = str(uuid.uuid4())
    seed(server, flow, 1)
    page = sign_in(visit(), flow)
    live = page.locator("#live")
    expect(live).to_have_attribute("data-state", "live")
    database = DATABASES[server.url].rpartition("/")[2]
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = 'leads-gql listener' AND datname = '{database}'",
        DATABASES[server.url],
    )
    expect(live).to_have_attribute("data-state", "retrying")
    missed = create(server, flow, name="While the feed was down")
    expect(live).to_have_attribute("data-state", "live", timeout=20_000)
    first = page.locator("#rows tr").first
    expect(first).to_have_attribute("data-id", missed["id"])
    page.wait_for_timeout(500)
    create(server, flow, name="After the feed came back")
    expect(first.locator("td.name")).to_have_text("After the feed came back")
    expect(page.locator("#summary")).to_have_text("3 leads · showing 1–3")
