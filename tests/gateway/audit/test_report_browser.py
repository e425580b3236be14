"""The HTML audit report in a real browser: headless Chromium driven by Selenium.

Debian's `chromium` and `chromium-driver` (`.ci/ensure-tools` installs them). The page is
rendered by the real command from a known trail; the figures it shows are checked against
the records, a filter is exercised, the CSP must block nothing the page needs (the
browser's console stays clean) while it does block an injected script, and a screenshot
is saved (its path is printed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from gateway.audit import signing
from gateway.secretstore.localfile import LocalSecretStore
from tests.conftest import scoregate
from tests.gateway.audit.test_trail import event, write

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def traffic() -> list[Any]:
    """Two hours of a small deployment: three principals on two models, denials, 429s, a
    burst of failed authentications and two generations of one key."""
    events = []
    for i in range(120):
        minute = i  # one request a minute from 10:00
        who = ("alice", "bob", "carol")[i % 3]
        changes: dict[str, Any] = {
            "subject": who,
            "model": "iris" if i % 4 else "digits",
            "key_id": f"key-{who}",
            "key_version": "gen-2" if who == "alice" and i >= 60 else "gen-1",
            "latency_ms": 1.0 + (i % 10),
            "time": f"2026-12-02T{10 + minute // 60:02d}:{minute % 60:02d}:00.000Z",
        }
        if who == "bob" and i % 2:
            changes |= {"decision": "deny", "reason": "scope_missing", "status": 403}
        if who == "carol" and i > 90:
            changes |= {"decision": "deny", "reason": "rate_limit_principal", "status": 429}
        events.append(event(i, **changes))
    for s in range(6):  # a burst of failed authentications at 11:30
        events.append(
            event(
                1000 + s,
                subject=None,
                key_id=None,
                key_version=None,
                model=None,
                decision="deny",
                reason="api_key_unknown",
                status=401,
                client="203.0.113.7",
                time=f"2026-12-02T11:30:{s * 5:02d}.500Z",
            )
        )
    events.sort(key=lambda e: e.time)
    return events


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The page `scoregate audit report --html` writes, and every record of its trail."""
    state = tmp_path_factory.mktemp("report-state")

    async def make() -> None:
        signer = await signing.load_signer(LocalSecretStore(state / "secrets.json"), create=True)
        await write(state / "audit" / "audit.jsonl", traffic(), signer=signer, checkpoint_every=50)

    asyncio.run(make())
    page = state / "report.html"
    out = scoregate("audit", "report", "--html", str(page), state=state)
    assert out.returncode == 0, out.stderr
    records = [
        orjson.loads(line) for line in (state / "audit" / "audit.jsonl").read_bytes().splitlines()
    ]
    return page, records


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    assert CHROMIUM and CHROMEDRIVER, (
        "the browser test needs Debian's chromium and chromium-driver (bash .ci/ensure-tools)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.add_argument("--headless=new")
    if os.geteuid() == 0:  # CI runs as root, where Chromium's sandbox cannot start
        options.add_argument("--no-sandbox")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--window-size=1280,1800")
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is Debian's: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def table(driver: webdriver.Chrome, element_id: str) -> dict[str, str]:
    """A screen-reader table (visually hidden) as {first cell: second cell}."""
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{element_id} tbody tr")
    cells = [
        [c.get_attribute("textContent") for c in r.find_elements(By.CSS_SELECTOR, "th, td")]
        for r in rows
    ]
    return {c[0]: c[1] for c in cells if len(c) > 1}


def n(value: int) -> str:
    return f"{value:,}"


def test_the_report_in_chromium(
    browser: webdriver.Chrome, report: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    page, trail = report
    records = [r for r in trail if r["type"] == "request"]
    checkpoints = [r for r in trail if r["type"] == "checkpoint"]
    browser.get(page.as_uri())
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.body.dataset.ready") == "true"
    )
    banner = text(browser, "banner")
    assert banner == (
        f"INTACT: {len(trail)} records (seq 1\N{EN DASH}{len(trail)}), chain unbroken; "
        f"{len(checkpoints)} checkpoint{'' if len(checkpoints) == 1 else 's'} signed by key "
        f"{checkpoints[0]['key_id']} "
        f"({len(checkpoints)}); 0 records after the last one"
    )
    assert browser.title.startswith("INTACT")

    # The figures shown are the records'.
    denied = [r for r in records if r["decision"] == "deny"]
    assert text(browser, "kpi-requests") == n(len(records)) == "126"
    assert text(browser, "kpi-denied") == n(len(denied))
    assert text(browser, "kpi-limited") == n(sum(r["status"] == 429 for r in records))
    reasons = table(browser, "table-reasons")
    assert reasons == {
        reason: n(sum(r["reason"] == reason for r in denied))
        for reason in {r["reason"] for r in denied}
    }
    assert sum(int(v.replace(",", "")) for v in table(browser, "table-time").values()) == len(
        records
    )
    burst = browser.find_element(By.XPATH, "//h2[starts-with(., 'Failed-authentication')]")
    assert burst.text == "Failed-authentication bursts: 1"

    # A filter: bob's requests only. Every figure follows.
    Select(browser.find_element(By.NAME, "principal")).select_by_visible_text("bob")
    bobs = [r for r in records if r["subject"] == "bob"]
    assert text(browser, "kpi-requests") == n(len(bobs))
    assert text(browser, "kpi-denied") == n(sum(r["decision"] == "deny" for r in bobs))
    assert table(browser, "table-reasons") == {"scope_missing": n(len(bobs) // 2)}
    assert table(browser, "table-principals") == {"bob": n(len(bobs) // 2)}
    visible_keys = [
        row.text.split()[0]
        for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-p]")
        if row.is_displayed() and row.text.startswith("key-")
    ]
    assert visible_keys == ["key-bob"]

    # And time: from 11:00 on, bob's requests of the second hour.
    Select(browser.find_element(By.NAME, "from")).select_by_visible_text("2 Dec 11:00")
    later = [r for r in bobs if r["time"] >= "2026-12-02T11:00"]
    assert text(browser, "kpi-requests") == n(len(later))

    shot = tmp_path / "audit-report.png"
    Select(browser.find_element(By.NAME, "principal")).select_by_visible_text("all")
    Select(browser.find_element(By.NAME, "from")).select_by_index(0)
    assert text(browser, "kpi-requests") == n(len(records))
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")  # where to look
    assert shot.stat().st_size > 10_000

    # The policy blocks nothing the page needs: the console holds no error at all.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    # And it does block what the page does not need: an injected inline script.
    browser.execute_script(
        "var s = document.createElement('script'); s.textContent = 'window.injected = 1';"
        "document.body.appendChild(s);"
    )
    assert browser.execute_script("return window.injected") is None
    refused = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert any("Content Security Policy" in m for m in refused), refused
