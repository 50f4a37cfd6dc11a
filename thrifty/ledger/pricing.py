"""What a call cost, from the price table bundled in genai-prices.

Prices are data with a version, not code: every :class:`Price` names where its
number came from (``source``) and which price table produced it (``version``),
so a ledger row can be re-checked later against the same table.

* ``"genai-prices"``: priced from genai-prices' bundled data.
* ``"local"``: a model run in this process; its cost is exactly ``Decimal(0)``.
* ``"unpriced"``: genai-prices does not know the model or the provider; the
  cost is ``None``, never a silent zero.

Mapping our usage onto genai-prices'. thrifty's :class:`~thrifty.types.Usage`
partitions the prompt: ``input_tokens`` are the *uncached* tokens, and
``cache_read_tokens`` and ``cache_write_tokens`` are the rest. genai-prices'
``input_tokens`` is the *whole* prompt instead: its units form a hierarchy in
which ``cache_read_tokens`` and ``cache_write_tokens`` are descendants of
``input_tokens``, and the leaf charged at the plain input rate is ``input_tokens``
minus the priced descendants (``genai_prices.decompose.compute_leaf_values``; its
Anthropic extractor likewise sums ``input_tokens + cache_creation_input_tokens +
cache_read_input_tokens`` into ``input_tokens``). So we pass
``input_tokens = input + cache_read + cache_write``. That total is also what
selects a tier of tiered (long-context) prices, as the provider does. When a
model has no cache-read or cache-write price, its cached tokens fall back to the
plain input rate, which is how such a provider bills them. ``output_tokens``
already include reasoning tokens in both models; reasoning tokens are passed as
``output_reasoning_tokens`` (a descendant of ``output_tokens``), which only
matters for a model that prices them separately. Anthropic's one-hour cache
writes cannot be told apart from five-minute ones in our usage, and are priced
at the five-minute (``cache_write_mtok``) rate.

Offline by construction: genai-prices can refresh its table over HTTP
(``genai_prices.UpdatePrices``, a background thread that installs a process-wide
"custom snapshot"). thrifty never starts it, and prices from a private snapshot
of the *bundled* data, so even if something else in the process starts the
updater, thrifty's prices and their ``version`` stay those of the installed
package.

``version`` reads ``"<genai-prices version>+data.<first 12 hex of the SHA-256
of genai_prices/data.py>"``, e.g. ``"0.2.3+data.5f4d8e175a91"``: the package
exposes no identifier of its own for the data, and the hash names the exact
price table used.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from thrifty.types import Usage

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, Provider

__all__ = ["Price", "context_window", "price", "price_table_version", "worst_case_cost"]

SOURCE_GENAI_PRICES = "genai-prices"
SOURCE_LOCAL = "local"
SOURCE_UNPRICED = "unpriced"

# usage keys thrifty itself reports to genai-prices
_OUR_USAGE_KEYS = frozenset(
    {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "output_reasoning_tokens"}
)


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one call in USD, where it came from, and which price table gave it.

    ``cost_usd`` is ``None`` exactly when ``source == "unpriced"``.
    """

    cost_usd: Decimal | None
    source: str
    version: str | None


def price(
    usage: Usage,
    model: str,
    *,
    pricing_id: str | None,
    is_local: bool,
    at: datetime | None = None,
) -> Price:
    """Price ``usage`` of ``model``.

    ``pricing_id`` is the genai-prices provider id (``"openai"``, ``"anthropic"``,
    ...), or ``None`` to let genai-prices infer the provider from the model name.
    ``at`` is when the call was made (prices change over time; ``None`` means
    now; naive datetimes are read as UTC). A model or provider genai-prices does
    not know gives an ``"unpriced"`` price with ``cost_usd=None``.

    Raises ``ValueError`` if a token count is negative.
    """
    if is_local:
        return Price(Decimal(0), SOURCE_LOCAL, None)
    entry = _lookup(model, pricing_id)
    if entry is None:
        return Price(None, SOURCE_UNPRICED, price_table_version())
    calc = entry.model.calc_price(
        _genai_usage(usage, entry.zero_usage),
        entry.provider,
        genai_request_timestamp=at,
    )
    return Price(calc.total_price, SOURCE_GENAI_PRICES, price_table_version())


def worst_case_cost(
    prompt_tokens: int,
    max_output_tokens: int,
    model: str,
    *,
    pricing_id: str | None,
    is_local: bool,
) -> Decimal | None:
    """The most a call can cost, for a budget reservation; ``None`` if unpriced.

    Every prompt token is charged at the uncached input rate (a cache hit can
    only make it cheaper; a cache write, where it costs more, is not assumed),
    and the output at ``max_output_tokens``. Tiered prices apply to the whole
    prompt, as they will on the invoice.
    """
    usage = Usage(input_tokens=prompt_tokens, output_tokens=max_output_tokens)
    return price(usage, model, pricing_id=pricing_id, is_local=is_local).cost_usd


def context_window(model: str, *, pricing_id: str | None) -> int | None:
    """``model``'s context window in tokens, as genai-prices' table gives it, or ``None`` where it does not."""
    entry = _lookup(model, pricing_id)
    window = None if entry is None else entry.model.context_window
    return window if isinstance(window, int) and window > 0 else None


def price_table_version() -> str:
    """``"<genai-prices version>+data.<sha256[:12] of its bundled data>"``."""
    return _version()


# ---------------------------------------------------------------- internals


@dataclass(frozen=True, slots=True)
class _Entry:
    provider: Provider = field(repr=False)
    model: ModelInfo = field(repr=False)
    # zero for every usage key this model prices and we do not report: genai-prices
    # would otherwise infer each missing one on every call (most of its cost)
    zero_usage: dict[str, int]


_snapshot_lock = threading.Lock()
_snapshot_value: DataSnapshot | None = None


def _snapshot() -> DataSnapshot:
    """A private snapshot of genai-prices' bundled data; never the auto-updated one."""
    global _snapshot_value
    if _snapshot_value is None:
        with _snapshot_lock:
            if _snapshot_value is None:
                from genai_prices.data import providers
                from genai_prices.data_snapshot import DataSnapshot

                _snapshot_value = DataSnapshot(providers=providers, from_auto_update=False)
    return _snapshot_value


@lru_cache(maxsize=2048)  # bounded: model names come from callers
def _lookup(model: str, pricing_id: str | None) -> _Entry | None:
    try:
        provider, model_info = _snapshot().find_provider_model(model, None, pricing_id, None)
    except LookupError:
        return None
    return _Entry(provider, model_info, _zero_usage_for(model_info))


def _zero_usage_for(model_info: ModelInfo) -> dict[str, int]:
    from genai_prices.data_units import unit_data
    from genai_prices.types import ModelPrice

    usage_key_by_price_key = {unit["price_key"]: key for key, unit in unit_data.items()}
    prices: Any = model_info.prices
    price_sets = [prices] if isinstance(prices, ModelPrice) else [c.prices for c in prices]
    price_sets += [v.prices for v in model_info.price_variants or ()]
    zero: dict[str, int] = {}
    for model_price in price_sets:
        for price_key, value in vars(model_price).items():
            usage_key = usage_key_by_price_key.get(price_key)
            # "requests" is counted by genai-prices itself (one per call)
            if (
                value is not None
                and usage_key
                and usage_key != "requests"
                and usage_key not in _OUR_USAGE_KEYS
            ):
                zero[usage_key] = 0
    return zero


def _genai_usage(usage: Usage, zero_usage: dict[str, int]) -> Any:
    from genai_prices import Usage as GenaiUsage

    values: dict[str, int] = dict(zero_usage)
    # genai-prices' input_tokens is the whole prompt: cache reads and writes are parts of it
    values["input_tokens"] = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    values["cache_read_tokens"] = usage.cache_read_tokens
    values["cache_write_tokens"] = usage.cache_write_tokens
    values["output_tokens"] = usage.output_tokens
    if usage.reasoning_tokens > 0:
        # a part of output_tokens; a provider that reports more is clamped, not rejected
        values["output_reasoning_tokens"] = min(usage.reasoning_tokens, max(usage.output_tokens, 0))
    return GenaiUsage(**values)


@lru_cache(maxsize=1)
def _version() -> str:
    import genai_prices

    version: str = genai_prices.__version__
    digest = _data_digest()
    return f"{version}+data.{digest}" if digest else version


def _data_digest() -> str | None:
    from importlib.util import find_spec

    spec = find_spec("genai_prices.data")
    if spec is None or not spec.origin:
        return None
    try:
        with open(spec.origin, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return None
