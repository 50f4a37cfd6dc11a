"""Prometheus metrics of one proxy app, in a registry of its own (never the process-wide one).

Per request: the endpoint's count by status, model and provider, its total
duration and thrifty's own share of it (overhead); per ledger row that the
call produced: tokens by partition, cost in USD (or a count of unpriced
calls), tokens and USD saved, time to first token. The ledger recorder's
state (rows buffered, spilled, written, rejected; healthy) is read at scrape
time. With ``--workers N`` each worker process counts its own requests.

Label values are bounded: model and provider are those of a call that
reached an upstream and used tokens; a call refused before (an unknown model
name, say) is counted with empty model and provider labels, so callers cannot
grow the label sets at will.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
PARTITIONS = ("input", "cache_read", "cache_write", "output", "reasoning")


class Metrics:
    def __init__(self, recorder: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "thrifty_requests", "Requests answered, by endpoint, HTTP status, provider and model.",
            ["endpoint", "status", "provider", "model"], registry=registry)
        self.tokens = Counter(
            "thrifty_tokens", "Billed tokens by partition (input = uncached prompt tokens).",
            ["provider", "model", "partition"], registry=registry)
        self.cost = Counter("thrifty_cost_usd", "Cost of priced calls in USD.", ["provider", "model"],
                            registry=registry)
        self.unpriced = Counter("thrifty_unpriced_calls", "Upstream calls that could not be priced.",
                                ["provider", "model"], registry=registry)
        self.tokens_saved = Counter("thrifty_tokens_saved", "Tokens saved by thrifty's techniques.",
                                    ["provider", "model"], registry=registry)
        self.usd_saved = Counter("thrifty_usd_saved", "USD saved by thrifty's techniques.", ["provider", "model"],
                                 registry=registry)
        self.duration = Histogram("thrifty_request_duration_seconds", "Whole request time, upstream included.",
                                  ["endpoint"], buckets=_SECONDS, registry=registry)
        self.ttft = Histogram("thrifty_time_to_first_token_seconds", "Time to the first streamed token.",
                              ["provider", "model"], buckets=_SECONDS, registry=registry)
        self.overhead = Histogram("thrifty_overhead_seconds", "thrifty's own time per request (upstream excluded).",
                                  ["endpoint"], buckets=_OVERHEAD, registry=registry)
        if recorder is not None:
            registry.register(_LedgerCollector(recorder))
        self._cache: dict[tuple[str, str], tuple[Any, ...]] = {}

    def observe(self, endpoint: str, status: int, record: Any, duration_s: float, overhead_s: float | None) -> None:
        """Count one answered request, and the ledger row (``record``) of its last upstream attempt."""
        provider = model = ""
        if record is not None and record.provider and (record.output_tokens or record.input_tokens):
            provider, model = record.provider, record.model_used or ""
        self.requests.labels(endpoint, str(status), provider, model).inc()
        self.duration.labels(endpoint).observe(duration_s)
        if overhead_s is not None:
            self.overhead.labels(endpoint).observe(max(overhead_s, 0.0))
        if record is None or not provider:
            return
        series = self._series(provider, model)
        for counter, value in zip(series[:5], (record.input_tokens, record.cache_read_tokens,
                                               record.cache_write_tokens, record.output_tokens,
                                               record.reasoning_tokens), strict=True):
            if value:
                counter.inc(value)
        if record.cost_usd is not None:
            series[5].inc(float(record.cost_usd))
        elif record.price_source == "unpriced":
            series[6].inc()
        if record.tokens_saved:
            series[7].inc(record.tokens_saved)
        if record.usd_saved:
            series[8].inc(float(Decimal(record.usd_saved)))
        if record.ttft_ms is not None:
            series[9].observe(record.ttft_ms / 1000.0)

    def _series(self, provider: str, model: str) -> tuple[Any, ...]:
        key = (provider, model)
        found = self._cache.get(key)
        if found is None:
            found = (*(self.tokens.labels(provider, model, p) for p in PARTITIONS),
                     self.cost.labels(provider, model), self.unpriced.labels(provider, model),
                     self.tokens_saved.labels(provider, model), self.usd_saved.labels(provider, model),
                     self.ttft.labels(provider, model))
            if len(self._cache) < 4096:
                self._cache[key] = found
        return found

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _LedgerCollector:
    """The recorder's state, read when Prometheus scrapes."""

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        r = self._recorder
        yield GaugeMetricFamily("thrifty_ledger_healthy", "1 while the ledger database takes writes.",
                                value=1.0 if getattr(r, "healthy", True) else 0.0)
        yield GaugeMetricFamily("thrifty_ledger_buffered_rows", "Ledger rows in memory, not yet written.",
                                value=float(getattr(r, "buffered", 0)))
        yield GaugeMetricFamily("thrifty_ledger_spilled_rows", "Ledger rows spilled to disk, not yet written.",
                                value=float(getattr(r, "spilled", 0)))
        yield CounterMetricFamily("thrifty_ledger_written_rows", "Ledger rows written.",
                                  value=float(getattr(r, "written", 0)))
        yield CounterMetricFamily("thrifty_ledger_rejected_rows", "Ledger rows the database refused.",
                                  value=float(getattr(r, "rejected", 0)))
