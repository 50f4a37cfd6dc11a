"""Prices from genai-prices' bundled table: mapping, sources, versions, offline."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from genai_prices import data_snapshot

from thrifty.ledger.pricing import Price, price, price_table_version, worst_case_cost
from thrifty.types import Usage

REPO_ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2025, 9, 1, tzinfo=UTC)
MTOK = 1_000_000


def reference(usage: Usage, model: str, provider_id: str | None, at: datetime = AT) -> Decimal:
    """genai-prices' own number, computed through its public API with its own usage model."""
    ref_usage = genai_prices.Usage(
        # genai-prices' input_tokens is the whole prompt, cached tokens included
        input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
    calc = genai_prices.calc_price(ref_usage, model, provider_id=provider_id, genai_request_timestamp=at)
    return calc.total_price


@pytest.mark.parametrize(
    ("model", "pricing_id", "usage"),
    [
        ("gpt-4o-mini", "openai", Usage(input_tokens=1234, output_tokens=567)),
        ("gpt-4o-mini", None, Usage(input_tokens=800, cache_read_tokens=200, output_tokens=50)),
        ("gpt-4o", "openai", Usage(input_tokens=10_000, cache_read_tokens=30_000, output_tokens=999)),
        ("gpt-4.1", "openai", Usage(input_tokens=5, output_tokens=7)),
        (
            "o3",
            "openai",
            Usage(input_tokens=1000, cache_read_tokens=1000, output_tokens=4000, reasoning_tokens=3000),
        ),
        (
            "claude-3-5-haiku-latest",
            "anthropic",
            Usage(input_tokens=100, cache_read_tokens=9000, output_tokens=300),
        ),
        (
            "claude-3-5-haiku-20241022",
            None,
            Usage(input_tokens=100, cache_write_tokens=4000, output_tokens=10),
        ),
        (
            "claude-sonnet-4-5",
            "anthropic",
            Usage(input_tokens=12, cache_read_tokens=1000, cache_write_tokens=2000, output_tokens=3),
        ),
        ("gemini-2.5-pro", "google", Usage(input_tokens=2000, output_tokens=100)),
    ],
)
def test_price_matches_genai_prices(model: str, pricing_id: str | None, usage: Usage) -> None:
    result = price(usage, model, pricing_id=pricing_id, is_local=False, at=AT)
    assert result.source == "genai-prices"
    assert result.cost_usd == reference(usage, model, pricing_id)
    assert result.cost_usd > 0


@pytest.mark.parametrize(
    ("model", "pricing_id", "input_", "cache_read", "cache_write", "output"),
    [
        # published $ per 1M tokens (OpenAI / Anthropic pricing pages), as genai-prices has them
        ("gpt-4o-mini", "openai", "0.15", "0.075", None, "0.60"),
        ("gpt-4o", "openai", "2.50", "1.25", None, "10"),
        ("claude-3-5-haiku-latest", "anthropic", "0.80", "0.08", "1.00", "4"),
        ("claude-3-5-sonnet-20241022", "anthropic", "3", "0.30", "3.75", "15"),
    ],
)
def test_published_prices_per_million(
    model: str, pricing_id: str, input_: str, cache_read: str, cache_write: str | None, output: str
) -> None:
    def cost(**kw: int) -> Decimal | None:
        return price(Usage(**kw), model, pricing_id=pricing_id, is_local=False, at=AT).cost_usd

    assert cost(input_tokens=MTOK) == Decimal(input_)
    assert cost(output_tokens=MTOK) == Decimal(output)
    assert cost(cache_read_tokens=MTOK) == Decimal(cache_read)
    if cache_write is not None:
        assert cost(cache_write_tokens=MTOK) == Decimal(cache_write)
    # gpt-4o-mini: 1000 uncached + 2000 cached in, 500 out
    mixed = cost(input_tokens=1000, cache_read_tokens=2000, output_tokens=500)
    expected = (1000 * Decimal(input_) + 2000 * Decimal(cache_read) + 500 * Decimal(output)) / MTOK
    assert mixed == expected


def test_cached_tokens_are_priced_at_the_cache_read_rate() -> None:
    all_uncached = price(Usage(input_tokens=1000), "gpt-4o", pricing_id="openai", is_local=False, at=AT)
    half_cached = price(
        Usage(input_tokens=500, cache_read_tokens=500), "gpt-4o", pricing_id="openai", is_local=False, at=AT
    )
    # $2.50 vs $1.25 per 1M: 500 cached tokens save 500 * 1.25 / 1M
    assert all_uncached.cost_usd - half_cached.cost_usd == Decimal("0.000625")


def test_anthropic_cache_writes_cost_more_than_input() -> None:
    writes = price(
        Usage(cache_write_tokens=10_000),
        "claude-3-5-haiku-latest",
        pricing_id="anthropic",
        is_local=False,
        at=AT,
    )
    plain = price(
        Usage(input_tokens=10_000), "claude-3-5-haiku-latest", pricing_id="anthropic", is_local=False, at=AT
    )
    assert writes.cost_usd == Decimal("0.01")  # $1.00 per 1M
    assert plain.cost_usd == Decimal("0.008")  # $0.80 per 1M


def test_cached_tokens_fall_back_to_input_rate_without_a_cache_price() -> None:
    # gpt-4 has no cached-input price: cached tokens cost what uncached ones do
    cached = price(Usage(cache_read_tokens=MTOK), "gpt-4", pricing_id="openai", is_local=False, at=AT)
    assert cached.cost_usd == Decimal(30)


def test_tiers_are_chosen_by_the_whole_prompt_including_cache() -> None:
    # claude-sonnet-4-5: $3 / 1M input up to 200k prompt tokens, $6 above; cache reads $0.30 / $0.60
    small = Usage(input_tokens=100_000, cache_read_tokens=50_000, output_tokens=1000)
    large = Usage(input_tokens=100_000, cache_read_tokens=150_000, output_tokens=1000)
    small_cost = price(small, "claude-sonnet-4-5", pricing_id="anthropic", is_local=False, at=AT).cost_usd
    large_cost = price(large, "claude-sonnet-4-5", pricing_id="anthropic", is_local=False, at=AT).cost_usd
    assert small_cost == (100_000 * 3 + Decimal("50000") * Decimal("0.3") + 1000 * 15) / Decimal(MTOK)
    assert large_cost == (100_000 * 6 + Decimal("150000") * Decimal("0.6") + 1000 * Decimal("22.5")) / MTOK
    assert large_cost == reference(large, "claude-sonnet-4-5", "anthropic")


def test_reasoning_tokens_are_part_of_output_not_extra() -> None:
    with_reasoning = price(
        Usage(input_tokens=10, output_tokens=1000, reasoning_tokens=800),
        "o3",
        pricing_id="openai",
        is_local=False,
        at=AT,
    )
    without = price(
        Usage(input_tokens=10, output_tokens=1000), "o3", pricing_id="openai", is_local=False, at=AT
    )
    assert with_reasoning.cost_usd == without.cost_usd


def test_reasoning_tokens_priced_separately_where_the_model_does() -> None:
    # sonar-deep-research: output $8 / 1M, reasoning $3 / 1M
    result = price(
        Usage(output_tokens=1000, reasoning_tokens=600),
        "sonar-deep-research",
        pricing_id="perplexity",
        is_local=False,
        at=AT,
    )
    assert result.cost_usd == (400 * 8 + 600 * 3) / Decimal(MTOK)


def test_price_depends_on_when_the_call_was_made() -> None:
    # o3 went from $10/$40 to $2/$8 per 1M on 2025-06-10
    usage = Usage(input_tokens=MTOK, output_tokens=MTOK)
    before = price(usage, "o3", pricing_id="openai", is_local=False, at=datetime(2025, 5, 1, tzinfo=UTC))
    after = price(usage, "o3", pricing_id="openai", is_local=False, at=datetime(2025, 7, 1, tzinfo=UTC))
    assert before.cost_usd == Decimal(50)
    assert after.cost_usd == Decimal(10)


@pytest.mark.parametrize(
    ("model", "pricing_id"),
    [("no-such-model-xyz", None), ("no-such-model-xyz", "openai"), ("gpt-4o", "no-such-provider")],
)
def test_unknown_model_or_provider_is_unpriced_never_zero(model: str, pricing_id: str | None) -> None:
    result = price(Usage(input_tokens=10, output_tokens=10), model, pricing_id=pricing_id, is_local=False)
    assert result == Price(None, "unpriced", price_table_version())
    assert worst_case_cost(10, 10, model, pricing_id=pricing_id, is_local=False) is None


def test_local_models_cost_exactly_zero() -> None:
    result = price(
        Usage(input_tokens=10**6, output_tokens=10**6), "smollm2-135m", pricing_id=None, is_local=True
    )
    assert result.cost_usd == Decimal(0)
    assert isinstance(result.cost_usd, Decimal)
    assert result.source == "local"
    assert worst_case_cost(100, 100, "gpt-4o", pricing_id="openai", is_local=True) == Decimal(0)


def test_worst_case_cost_charges_every_prompt_token_uncached() -> None:
    worst = worst_case_cost(10_000, 2_000, "gpt-4o-mini", pricing_id="openai", is_local=False)
    assert worst == (10_000 * Decimal("0.15") + 2_000 * Decimal("0.6")) / MTOK
    cached = price(
        Usage(input_tokens=2_000, cache_read_tokens=8_000, output_tokens=2_000),
        "gpt-4o-mini",
        pricing_id="openai",
        is_local=False,
    )
    assert cached.cost_usd < worst


def test_worst_case_cost_uses_the_long_context_tier() -> None:
    worst = worst_case_cost(300_000, 1000, "gemini-2.5-pro", pricing_id="google", is_local=False)
    assert worst == (300_000 * Decimal("2.5") + 1000 * 15) / MTOK


def test_version_names_package_and_data() -> None:
    version = price_table_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\+data\.[0-9a-f]{12}", version), version
    assert version.startswith(genai_prices.__version__ + "+data.")
    result = price(Usage(input_tokens=1), "gpt-4o", pricing_id="openai", is_local=False)
    assert result.version == version


def test_negative_counts_are_rejected() -> None:
    with pytest.raises(ValueError):
        price(Usage(input_tokens=10, cache_read_tokens=-5), "gpt-4o", pricing_id="openai", is_local=False)


def test_an_auto_updated_snapshot_does_not_change_our_prices() -> None:
    # genai-prices' UpdatePrices installs a process-wide snapshot; thrifty keeps to the bundled table
    expected = price(Usage(input_tokens=MTOK), "gpt-4o", pricing_id="openai", is_local=False, at=AT)
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        assert (
            price(Usage(input_tokens=MTOK), "gpt-4o", pricing_id="openai", is_local=False, at=AT) == expected
        )
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_prices_offline_and_imports_nothing_heavy_at_import() -> None:
    script = textwrap.dedent(
        """
        import socket, sys

        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import thrifty.ledger.pricing as pricing
        assert "genai_prices" not in sys.modules, "genai-prices imported at import time"

        from thrifty.types import Usage
        p = pricing.price(Usage(input_tokens=1000, output_tokens=1000), "gpt-4o-mini",
                          pricing_id="openai", is_local=False)
        assert p.source == "genai-prices" and p.cost_usd > 0, p
        import threading
        assert not any(t.name.startswith("genai_prices") for t in threading.enumerate())
        print(p.cost_usd)
        """
    )
    env = {
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.00075"
