"""The web console in a real browser: Debian's headless Chromium driven by
Selenium against a running federation (one federation and one browser for the
module). Pages render; an unauthenticated browser is refused; a parked
withdrawal is retried from the console and reaches PAID; no page shows a
person's ID number or name; the Chinese pages are in Chinese.

Screenshots go to tmp_path, or to docs/img/console-*.png when YRD_SCREENSHOTS=1
(to regenerate the ones the runbook shows).
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.testing.localfed import LocalFederation
from tests.integration.conftest import JS, SH, full_name_of, fund_holder, payee_account
from tests.paths import CONFIG_DIR, REPOSITORY
from yrd.common.v1 import common_pb2
from yrd.fund.v1 import fund_pb2, fund_pb2_grpc

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.common.exceptions import (  # noqa: E402 - after the importorskip
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402 - after the importorskip
from selenium.webdriver.chrome.service import Service  # noqa: E402 - after the importorskip
from selenium.webdriver.common.by import By  # noqa: E402 - after the importorskip
from selenium.webdriver.common.keys import Keys  # noqa: E402 - after the importorskip
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402 - after the importorskip

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ADMIN_TOKEN = f"dev-office-{SH}"  # the Shanghai office client is granted AdminService
OFFICE = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
Result = TypeVar("Result")


class FederationThread:
    """A LocalFederation (consoles on) running in its own event loop and thread,
    so that the blocking browser calls of the test never stall the nodes."""

    def __init__(self, work_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.federation = LocalFederation(CONFIG_DIR, work_dir, console=True)

    def run(self, coroutine: Coroutine[Any, Any, Result], timeout: float = 60) -> Result:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def console_url(self, code: str = SH) -> str:
        console = self.federation.node(code).console
        assert console is not None, "the federation was started with consoles"
        return console.url

    def close(self) -> None:
        try:
            self.run(self.federation.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederationThread]:
    federation = FederationThread(tmp_path_factory.mktemp("console-federation"))
    try:
        federation.run(federation.federation.start(), timeout=90)
        yield federation
    finally:
        federation.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run scripts/ensure_test_tools.sh "
            "(installs Debian's chromium and chromium-driver)"
        )
    # Selenium Manager must never try the network: the driver and browser are
    # given, and it is told to stay offline.
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",  # the federation's test CA
        "--window-size=1280,1000",
        "--lang=en-US",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("YRD_SCREENSHOTS") == "1":
        return REPOSITORY / "docs" / "img"
    return tmp_path_factory.mktemp("screenshots")


def heading(driver: Any) -> str:
    return str(driver.find_element(By.TAG_NAME, "h1").text)


def open_page(driver: Any, url: str) -> str:
    driver.get(url)
    return heading(driver)


def log_in(
    driver: Any, base: str, token: str = ADMIN_TOKEN, operator: str = "Li Wei (on call)"
) -> None:
    driver.delete_all_cookies()  # a fresh login, in English
    driver.get(base + "login?lang=en")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "operator").send_keys(operator)
    click(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]"))


def click(driver: Any, element: Any) -> None:
    """Click a control that loads another page, and wait until the page it was
    on is gone (a click does not wait for the page it loads)."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 30).until(lambda _: gone(page))


def gone(element: Any) -> bool:
    """Whether ``element`` has left the document (its page was replaced).
    Mid-navigation Chromedriver may say so as "does not belong to the
    document" rather than as a stale element (selenium's staleness_of then
    fails the test instead of seeing the page gone)."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def wait_until(
    predicate: Callable[[], bool], seconds: float, what: str, seen: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what}; seen: {seen()}")
        time.sleep(0.5)


def post(url: str, data: dict[str, str], cookie: str = "") -> int:
    """A POST as a forging page would send it (no browser): the status code."""
    context = ssl.create_default_context(cafile=str(CONFIG_DIR / "310000" / "keys" / "ca.crt.pem"))
    assert url.startswith("https://127.0.0.1:")
    request = urllib.request.Request(  # noqa: S310 - an https URL of the console under test
        url,
        data=urllib.parse.urlencode(data).encode(),
        headers={"Cookie": cookie} if cookie else {},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect())
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The HTML of every page the tests saw (checked for personal data last)."""
    return []


class TestConsoleInBrowser:
    def test_unauthenticated_browser_is_refused(
        self, running: FederationThread, browser: Any
    ) -> None:
        base = running.console_url()
        browser.delete_all_cookies()
        for path in ("", "exchanges", "search?correlation_id=x", "log", "diagnostics"):
            browser.get(base + path)
            assert urllib.parse.urlparse(browser.current_url).path == "/login", path
            assert browser.find_element(By.ID, "token").get_attribute("type") == "password"
        # A POST without a session, and one with a session but no CSRF token: refused.
        assert post(base + "exchanges/act", {"action": "retry", "reference": "FW-1"}) == 403
        assert post(base + "log/verify", {}) == 403
        log_in(browser, base)
        session = browser.get_cookie("yrd_console_session")
        assert session is not None
        assert session["httpOnly"]
        assert session["secure"]
        assert session["sameSite"] == "Strict"
        cookie = f"yrd_console_session={session['value']}"
        assert post(base + "log/verify", {}, cookie) == 403
        assert post(base + "log/verify", {"csrf": "forged"}, cookie) == 403
        # A token the node refuses: no session.
        browser.delete_all_cookies()
        log_in(browser, base, token="not-a-token")
        assert browser.get_cookie("yrd_console_session") is None
        assert "UNAUTHENTICATED" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text

    def test_pages_render(
        self, running: FederationThread, browser: Any, screenshots: Path, texts: list[str]
    ) -> None:
        base = running.console_url()
        browser.delete_all_cookies()
        log_in(browser, base)
        assert heading(browser) == "Federation at a glance"
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        peers = browser.find_element(By.XPATH, "//table[caption[contains(., 'Peers of')]]")
        for code in ("320000", "330000", "340000"):
            assert code in peers.text
        texts.append(browser.page_source)
        for path, title in (
            ("exchanges", "Exchanges"),
            ("search", "Search by correlation id"),
            ("log", "Message log"),
            ("diagnostics", "Diagnostics"),
        ):
            assert open_page(browser, base + path) == title
            assert not browser.find_elements(By.CSS_SELECTOR, "[role=alert]"), (
                path,
                browser.find_element(By.CSS_SELECTOR, "[role=alert]").text,
            )
            texts.append(browser.page_source)
        # The message log verifies: intact.
        browser.get(base + "log")
        click(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/log/verify'] button"))
        assert "Intact" in browser.find_element(By.ID, "verdict").text
        texts.append(browser.page_source)
        # Keyboard: the first Tab reaches the skip link, the next ones the navigation.
        browser.get(base + "exchanges")
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        assert browser.switch_to.active_element.get_attribute("class") == "skip"
        browser.switch_to.active_element.send_keys(Keys.TAB)
        assert browser.switch_to.active_element.get_attribute("href").endswith("/")
        # Every form control has a label.
        for path in ("exchanges", "search"):
            browser.get(base + path)
            for control in browser.find_elements(
                By.CSS_SELECTOR, "input:not([type=hidden]), select"
            ):
                ident = control.get_attribute("id")
                assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{ident}']"), ident

    def test_parked_withdrawal_retried_from_the_console_reaches_paid(
        self, running: FederationThread, browser: Any, screenshots: Path, texts: list[str]
    ) -> None:
        federation = running.federation
        base = running.console_url()
        account, id_number, _ = fund_holder(federation, JS, SH)
        name = full_name_of(id_number)
        texts.append(f"PERSON {id_number} {name}")  # marker: checked by the last test

        async def submit_while_jiangsu_is_down() -> str:
            await federation.stop_node(JS)
            counter = fund_pb2_grpc.FundServiceStub(federation.channel(SH))
            answer = await counter.SubmitWithdrawal(
                fund_pb2.SubmitWithdrawalRequest(
                    application=fund_pb2.WithdrawalApplication(
                        idempotency_key=f"console-{uuid.uuid4().hex}",
                        applicant=common_pb2.Person(id_number=id_number, full_name=name),
                        fund_province=JS,
                        fund_account=account,
                        reason=fund_pb2.HOUSE_PURCHASE,
                        amount_fen=1_000_00,
                        payee_account=payee_account(7),
                        payee_bank="Bank of Shanghai",
                        supporting_certificates=["real-estate contract 2026-SH-000123"],
                    )
                ),
                metadata=OFFICE,
                timeout=10,
            )
            return str(answer.case_id)

        case_id = running.run(submit_while_jiangsu_is_down())
        log_in(browser, base)
        # The operator finds it: pending for Jiangsu. Park it (with confirmation).
        browser.get(base + "exchanges?state=pending&peer=" + JS)
        wait_until(
            lambda: case_id in browser.page_source or bool(browser.refresh()),
            30,
            f"{case_id} pending",
            lambda: str(browser.page_source),
        )
        click(
            browser, browser.find_element(By.CSS_SELECTOR, f"button[aria-label='Park {case_id}']")
        )
        assert heading(browser) == "Confirm: Park"
        browser.find_element(By.ID, "reason").send_keys("Jiangsu down for maintenance")
        click(browser, browser.find_element(By.ID, "confirm"))
        assert "Done" in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
        # Jiangsu comes back; a parked item waits for the operator.
        running.run(federation.start_node(JS))
        running.run(federation.refresh_directories())
        browser.get(base + "exchanges?state=parked")
        row = browser.find_element(By.XPATH, f"//tr[td[contains(., '{case_id}')]]")
        assert "Parked" in row.text
        search_link = row.find_element(By.CSS_SELECTOR, "td a").get_attribute("href")
        texts.append(browser.page_source)
        browser.save_screenshot(str(screenshots / "console-exchanges.png"))
        # Retry, confirm, and watch the case reach PAID.
        click(browser, row.find_element(By.CSS_SELECTOR, f"button[aria-label='Retry {case_id}']"))
        assert heading(browser) == "Confirm: Retry"
        click(browser, browser.find_element(By.ID, "confirm"))
        assert "Done" in browser.find_element(By.CSS_SELECTOR, "[role=status]").text

        def paid() -> bool:
            browser.get(search_link)
            cells = browser.find_elements(
                By.XPATH,
                f"//table[caption[contains(., 'Cases')]]//tr[td[1][contains(., '{case_id}')]]/td",
            )
            return any(cell.text.endswith("PAID") for cell in cells)

        wait_until(
            paid,
            60,
            f"case {case_id} PAID on the search page",
            lambda: str(browser.find_element(By.ID, "main").text),
        )
        cases = browser.find_element(By.XPATH, "//table[caption[contains(., 'Cases')]]")
        assert case_id in cases.text
        rows = browser.find_element(By.XPATH, "//table[caption[contains(., 'path')]]")
        assert "retry" in rows.text.lower()
        assert "park" in rows.text.lower()
        texts.append(browser.page_source)
        browser.save_screenshot(str(screenshots / "console-search.png"))
        # The overview's charts now show the exchanges of the last minutes.
        assert open_page(browser, base) == "Federation at a glance"
        assert browser.find_elements(By.CSS_SELECTOR, "figure svg[role=img]")
        texts.append(browser.page_source)
        browser.save_screenshot(str(screenshots / "console-overview.png"))
        # The message log holds the exchange's rows and the operator's actions: intact.
        browser.get(base + "log")
        click(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/log/verify'] button"))
        assert "Intact" in browser.find_element(By.ID, "verdict").text
        texts.append(browser.page_source)
        browser.save_screenshot(str(screenshots / "console-log.png"))

    def test_chinese_pages(self, running: FederationThread, browser: Any, texts: list[str]) -> None:
        base = running.console_url()
        if browser.get_cookie("yrd_console_session") is None:
            log_in(browser, base)
        assert open_page(browser, base + "?lang=zh") == "联邦概览"
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"
        nav = browser.find_element(By.TAG_NAME, "nav").text
        assert "交换" in nav
        assert "消息日志" in nav
        # Remembered: the next page without ?lang= is Chinese too.
        assert open_page(browser, base + "exchanges") == "交换"
        assert browser.find_element(By.CSS_SELECTOR, "label[for='f-state']").text == "状态"
        texts.append(browser.page_source)
        assert open_page(browser, base + "diagnostics?lang=en") == "Diagnostics"

    def test_a_token_the_node_stops_accepting_ends_the_session(
        self, running: FederationThread, browser: Any
    ) -> None:
        base = running.console_url()
        log_in(browser, base)
        node = running.federation.node(SH)
        original = node.federation
        admin = "yrd.admin.v1.AdminService"
        clients = tuple(
            client.model_copy(update={"services": tuple(s for s in client.services if s != admin)})
            for client in original.me.clients
        )
        revoked = original.with_me(original.me.model_copy(update={"clients": clients}))
        running.run(node.reload(revoked))
        try:
            browser.get(base + "exchanges")
            assert urllib.parse.urlparse(browser.current_url).path == "/login"
            assert "session ended" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
            log_in(browser, base)
            assert browser.get_cookie("yrd_console_session") is None
            assert "PERMISSION_DENIED" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
        finally:
            running.run(node.reload(original))

    def test_no_page_shows_personal_data(self, texts: list[str]) -> None:
        markers = [t for t in texts if t.startswith("PERSON ")]
        pages = [t for t in texts if not t.startswith("PERSON ")]
        assert markers
        assert len(pages) >= 8
        for marker in markers:
            _, id_number, name = marker.split(" ", 2)
            for page in pages:
                assert id_number not in page
                assert name not in page
        # Nor anything shaped like a resident ID number (18 characters, GB 11643).
        for page in pages:
            assert not re.search(r"(?<![0-9A-Za-z])[1-9][0-9]{16}[0-9X](?![0-9A-Za-z])", page)
