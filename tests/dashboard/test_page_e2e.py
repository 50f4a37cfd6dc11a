"""The dashboard page end to end: real calls through a running proxy, then the page in headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from tests.middleware.conftest import make_settings
from tests.middleware.server.conftest import Proxy, start_proxy
from thrifty.testing import CannedUpstream

CHROMIUM = "/usr/bin/chromium"
# Debian's chromium, as ENVIRONMENT.md says: `playwright install` cannot download its own browser here
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
# the README's screenshot; a run refreshes it only when asked (THRIFTY_UPDATE_SCREENSHOT=1)
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
MSG = [{"role": "user", "content": "Say hello."}]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' (playwright)")
if shutil.which(CHROMIUM) is None:  # .ci/run installs it; a bare dev machine may not have it
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: CannedUpstream) -> Iterator[Proxy]:
    yield from start_proxy(make_settings(tmp_path_factory.mktemp("dash") / "data", upstream))


@pytest.fixture(scope="module")
def calls(proxy: Proxy) -> list[dict]:
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="k", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    for _ in range(2):
        client.chat.completions.create(model="canned/echo", messages=MSG)
    rows = proxy.rows()
    assert len(rows) == 5
    return rows


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors, errors  # no script errors on any page


def open_dashboard(page, url: str, state: str = "ready") -> None:
    page.goto(url)
    page.wait_for_selector(f"body[data-state={state}]", timeout=15_000)


def card(page, name: str) -> str:
    return page.inner_text(f'#summary [data-summary="{name}"] .value')


def money(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def test_page_shows_the_calls_made_and_filters_them(proxy: Proxy, calls: list[dict], page, tmp_path: Path) -> None:
    open_dashboard(page, proxy.url + "/dashboard/")
    assert page.inner_text("#errors") == ""
    # the chart drew (uPlot renders into a canvas), and every table view has content
    assert page.locator("#timeseries-chart canvas").count() >= 1
    for view in ("#breakdown", "#calls", "#latency", "#errors-view"):
        assert page.locator(f"{view} table").count() == 1, view
    # the totals match the ledger rows the calls wrote
    assert card(page, "calls") == str(len(calls))
    cost = sum((Decimal(str(r["cost_usd"])) for r in calls if r["cost_usd"] is not None), Decimal(0))
    assert money(card(page, "cost_usd")) == pytest.approx(cost, abs=Decimal("0.000001"))
    priced = [r for r in calls if r["cost_usd"] is not None]  # "most expensive" lists priced calls
    assert priced and page.locator("#calls tbody tr").count() == len(priced)
    providers = {r["provider"] for r in calls}
    assert len(providers) == 2
    update = os.environ.get("THRIFTY_UPDATE_SCREENSHOT") == "1"
    page.screenshot(path=str(DOCS_SCREENSHOT if update else tmp_path / "dashboard.png"), full_page=True)

    # a filter changes the numbers, and lands in the URL so the view can be shared
    page.fill("input[name=provider]", "openai")
    page.click("#filters button[type=submit]")
    page.wait_for_function("document.body.dataset.state === 'ready' && location.search.includes('provider=openai')")
    page.wait_for_function("document.querySelector('#summary [data-summary=calls] .value').innerText === '3'")
    assert page.locator("#calls tbody tr").count() == len([r for r in priced if r["provider"] == "openai"])
    shared = page.url
    assert "provider=openai" in shared

    open_dashboard(page, shared)  # the shared URL opens the same view
    assert page.input_value("input[name=provider]") == "openai"
    assert card(page, "calls") == "3"

    # the breakdown selector re-groups, and its CSV link carries the filters
    page.select_option("#by", "provider")
    page.wait_for_function("document.querySelector('#breakdown td') && document.querySelector('#breakdown td').innerText === 'openai'")
    href = page.get_attribute('a.csv[data-view="breakdown"]', "href")
    assert "format=csv" in href and "by=provider" in href and "provider=openai" in href
    csv = page.request.get(proxy.url + href)
    assert csv.ok and csv.text().splitlines()[0].startswith("group")


def test_bad_input_gets_the_api_message_on_the_page(proxy: Proxy, calls: list[dict], page) -> None:
    open_dashboard(page, proxy.url + "/dashboard/?since=not-a-date", state="error")
    message = page.inner_text("#errors")
    assert "not-a-date" in message or "since" in message
    assert page.input_value("input[name=since]") == "not-a-date"


def test_dashboard_without_trailing_slash_loads(proxy: Proxy, calls: list[dict], page) -> None:
    open_dashboard(page, proxy.url + "/dashboard")
    assert page.locator("#timeseries-chart canvas").count() >= 1


def test_budget_bars_and_what_savings_are_measured_against(page, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from thrifty.dashboard.api import COUNTERFACTUALS
    from thrifty.dashboard.app import create_app
    from thrifty.ledger.db import create_engine
    from thrifty.ledger.migrations import migrate
    from thrifty.ledger.models import calls_table, key_spend_table, keys_table, savings_table
    from thrifty.testing import ServerThread

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    now = datetime.now(UTC)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(calls_table.insert(), [{
                "call_id": "s1", "attempt": 1, "started_at": now, "entry": "proxy", "wire": "openai",
                "stream": False, "provider": "openai", "model_used": "gpt-4o", "input_tokens": 100,
                "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 10, "reasoning_tokens": 0,
                "usage_source": "provider", "cost_usd": Decimal("0.01"), "price_source": "test", "tokens_saved": 40,
                "usd_saved": Decimal("0.002"), "status": "ok"}])
            conn.execute(savings_table.insert(), [{"call_id": "s1", "technique": "compression", "tokens_before": 140,
                                                   "tokens_after": 100, "tokens_saved": 40,
                                                   "usd_saved": Decimal("0.002")}])
            conn.execute(keys_table.insert(), [
                {"id": 1, "name": "team-a", "key_sha256": "a" * 64, "prefix": "tk-a", "source": "cli",
                 "created_at": now, "budget_usd": Decimal("10"), "budget_period": "total", "rpm": None, "models": "*"},
                {"id": 2, "name": "team-b", "key_sha256": "b" * 64, "prefix": "tk-b", "source": "cli",
                 "created_at": now, "budget_usd": None, "budget_period": "total", "rpm": None, "models": "*"},
            ])
            conn.execute(key_spend_table.insert(), [
                {"key_id": 1, "period_start": datetime(1970, 1, 1, tzinfo=UTC), "spent_usd": Decimal("9.5"),
                 "reserved_usd": Decimal("0.1"), "calls": 4}])
    finally:
        engine.dispose()
    with ServerThread(create_app(url)) as server:
        open_dashboard(page, server.url + "/dashboard/")
        # a key with a budget gets a bar at its use (spent and reserved), flagged near the limit; one without, none
        meters = page.locator("#budgets .meter")
        assert meters.count() == 1
        assert float(meters.first.get_attribute("data-used")) == pytest.approx(0.96)
        assert "high" in meters.first.get_attribute("class")
        # the savings view says what each technique's saving was measured against
        cell = page.inner_text('#savings td[data-col="measured_against"]')
        assert cell == COUNTERFACTUALS["compression"]
