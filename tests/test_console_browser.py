"""The console in a real browser (headless Chromium, driven by Playwright) against a real
stack: `alertbridge up` (secured nats-server, worker and paper broker, ingress,
projector, console), alerts sent with `alertbridge send`.

What a person does: log in (a wrong token is refused), watch an alert arrive in the live
feed without reloading, open its page and see it executed; be told on the live page that
the session ended when another browser logged it out; halt trading, send an alert
that the halt rejects into the DLQ, resume, replay it from the DLQ page after reading
what a replay does, and see it executed. The screenshots go to a temporary folder, or to
`ALERTBRIDGE_SCREENSHOTS` when set: `ALERTBRIDGE_SCREENSHOTS=docs/console` makes the ones
docs/console.md shows (a plain run leaves the working tree as it was).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from ops.tools.paths import console_token_file, read_secret
from tests.support import ROOT, free_port, free_stack_port
from tests.upstack import Up, launch, wait_ready

CHROMIUM = os.environ.get("ALERTBRIDGE_CHROMIUM") or shutil.which("chromium") or "chromium"
WITHIN = 20_000  # ms a page may take to show what the stack did


class Console:
    """The running stack, its console's address and token."""

    def __init__(self, up: Up, port: int, shots: Path) -> None:
        self.up = up
        self.shots = shots  # where the screenshots go
        self.url = f"http://127.0.0.1:{port}"
        self.token = read_secret(console_token_file(up.var))

    def send(self, alert_id: str, symbol: str = "NASDAQ:AAPL") -> None:
        sent = self.up.cli("send", "--url", f"{self.up.url}/webhook", "--id", alert_id,
                           "--symbol", symbol)  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    var = tmp_path_factory.mktemp("console-stack") / "var"
    port = free_port()
    up = launch(
        var, free_stack_port(), free_port(), free_port(), args=("--console-port", str(port))
    )
    try:
        wait_ready(up, f"{up.url}/readyz", timeout=60)
        wait_ready(up, f"http://127.0.0.1:{port}/login", timeout=30)
        wanted = os.environ.get("ALERTBRIDGE_SCREENSHOTS", "").strip()
        shots = ROOT / wanted if wanted else tmp_path_factory.mktemp("screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Console(up, port, shots)
    finally:
        assert up.stop() == 0, up.log.read_text()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield found
        await found.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    yield await context.new_page()
    await context.close()


async def _log_in(page: Page, console: Console) -> None:
    await page.goto(f"{console.url}/")
    await expect(page).to_have_url(f"{console.url}/login")  # no cookie: the login form
    await page.get_by_label("Token").fill(console.token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{console.url}/")


async def _until(
    page: Page, url: str, shown: Callable[[], Awaitable[bool]], within: float = 20
) -> None:
    """Reload `url` until `shown()` (the projector's views catch up within its lag)."""
    deadline = time.monotonic() + within
    while True:
        await page.goto(url)
        if await shown():
            return
        assert time.monotonic() < deadline, f"{url} never showed it:\n{await page.content()}"
        await page.wait_for_timeout(250)


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_a_wrong_token_is_refused(page: Page, console: Console) -> None:
    await page.goto(f"{console.url}/login")
    await page.get_by_label("Token").fill(console.token + "x")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_have_text("wrong token")
    await page.goto(f"{console.url}/dlq")
    await expect(page).to_have_url(f"{console.url}/login")  # still not logged in
    async with httpx.AsyncClient(base_url=console.url, timeout=5) as client:
        for header in ({}, {"Authorization": f"Bearer {console.token}x"}):
            answer = await client.get("/api/alerts", headers=header)
            assert answer.status_code == 401, answer.text
    await page.screenshot(path=console.shots / "login-refused.png")


async def test_an_alert_appears_live_and_its_page_shows_it_executed(
    page: Page, console: Console
) -> None:
    await _log_in(page, console)
    await expect(page.locator("#live-status")).to_have_attribute("data-live", "on", timeout=WITHIN)
    await asyncio.to_thread(console.send, "live-1")
    executed = page.locator('#live tr[data-alert="live-1"][data-kind="executed"]')
    await expect(executed).to_be_visible(timeout=WITHIN)  # no reload: the live feed
    await expect(page.locator('#live tr[data-alert="live-1"][data-kind="received"]')).to_have_count(
        1
    )
    await page.screenshot(path=console.shots / "feed.png", full_page=True)
    await executed.get_by_role("link", name="live-1").click()
    await expect(page.locator("#alert-status")).to_have_text("executed")
    await expect(page.locator('#timeline li[data-kind="executed"]')).to_contain_text("paper")
    await page.screenshot(path=console.shots / "alert.png", full_page=True)


async def test_the_live_page_says_when_its_session_ended(
    browser: Browser, page: Page, console: Console
) -> None:
    """Logged out from another browser: the live page says so, with a way back to the
    login form, instead of reconnecting for ever."""
    await _log_in(page, console)
    status = page.locator("#live-status")
    await expect(status).to_have_attribute("data-live", "on", timeout=WITHIN)
    # Another browser holding the same session (its cookies copied), which logs it out.
    other = await browser.new_context(storage_state=await page.context.storage_state())
    elsewhere = await other.new_page()
    await elsewhere.goto(f"{console.url}/")
    await elsewhere.get_by_role("button", name="Log out").click()
    await expect(elsewhere).to_have_url(f"{console.url}/login")
    await other.close()
    await expect(status).to_have_attribute("data-live", "ended", timeout=WITHIN)
    await expect(status).to_have_text("Session ended: log in again")
    await status.get_by_role("link", name="log in again").click()
    await expect(page).to_have_url(f"{console.url}/login")


async def test_a_halted_alert_is_replayed_from_the_dlq_and_executes(
    page: Page, console: Console
) -> None:
    await _log_in(page, console)
    await page.goto(f"{console.url}/health")
    await page.get_by_label("Account (empty: every account)").fill("default")
    await page.get_by_label("Reason").fill("browser test: broker maintenance")
    await page.get_by_role("button", name="Halt trading").click()
    await expect(page.locator("#halts")).to_contain_text("broker maintenance")
    await page.screenshot(path=console.shots / "health.png", full_page=True)
    await asyncio.to_thread(console.send, "halted-1", symbol="NASDAQ:MSFT")
    row = page.locator("#dlq tr", has_text="halted-1")
    await _until(page, f"{console.url}/dlq", lambda: _is(row.count(), 1))
    await page.goto(f"{console.url}/health")
    await page.get_by_role("button", name="Resume default").click()
    await expect(page.locator("#halts")).to_have_text("Every account trades.")
    await page.goto(f"{console.url}/dlq")
    await page.screenshot(path=console.shots / "dlq.png", full_page=True)
    await row.get_by_role("link", name="Replay").click()
    await expect(page.locator("#what-a-replay-does")).to_contain_text("age clock restarts")
    await page.screenshot(path=console.shots / "replay.png", full_page=True)
    await page.get_by_role("button", name="Replay alert halted-1").click()
    await expect(page.get_by_role("status")).to_contain_text("Replayed (round 1)")
    alert_page = page.url.split("?")[0]
    status = page.locator("#alert-status")
    await _until(page, alert_page, lambda: _is(status.inner_text(), "executed"))
    kinds = await page.locator("#timeline li").evaluate_all(
        "items => items.map(i => i.dataset.kind)"
    )
    assert kinds[0] == "rejected" and kinds[-2:] == ["replayed", "executed"], kinds
    await page.screenshot(path=console.shots / "replayed.png", full_page=True)
    await page.goto(f"{console.url}/dlq")
    await expect(row).to_have_count(0)  # the entry is gone once replayed


async def test_positions_on_a_phone(browser: Browser, console: Console) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = await context.new_page()
    await _log_in(phone, console)
    section = phone.locator("section", has_text="default")
    await _until(phone, f"{console.url}/positions", lambda: _is(section.count(), 1))
    await expect(section.locator("td", has_text="NASDAQ:AAPL")).to_be_visible()
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width}px"
    await phone.screenshot(path=console.shots / "positions-phone.png", full_page=True)
    await context.close()


async def test_every_page_is_served_by_the_console_itself(page: Page, console: Console) -> None:
    """Nothing from elsewhere: every request a page makes goes to the console."""
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    await _log_in(page, console)
    for path in ("/", "/dlq", "/positions", "/health"):
        await page.goto(f"{console.url}{path}")
    assert asked and all(url.startswith(console.url) for url in asked), asked
