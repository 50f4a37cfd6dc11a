"""The dashboard's read-only JSON API: parameters in, :mod:`thrifty.ledger.queries` out.

``DashboardAPI(engine).handle(endpoint, query_string)`` returns ``(status,
content_type, body)``. Every endpoint is a GET under ``/dashboard/api/`` and
takes the filters ``since`` and ``until`` (``7d``, ``24h``, ``today``, a date or
an ISO time, as ``thrifty report``; default: the last 30 days), ``model``,
``provider``, ``key``, ``project``, ``user`` and ``tag``; ``format=csv`` gives
the endpoint's table as CSV. Endpoints:

* ``summary``: the totals (calls, tokens, ``cost_usd``, unpriced calls, savings,
  errors, retries);
* ``timeseries?bucket=hour|day|week``: calls, tokens, cost and USD saved per bucket;
* ``breakdown?by=model|provider|key|project|user|tag``: the totals per group;
* ``savings``: tokens before, after and saved, and USD saved, per technique, and
  (``counterfactuals``) what each technique's saving is measured against;
* ``latency[?by=model]``: p50/p90/p99 of ``duration_ms``, ``ttft_ms``, ``overhead_ms``;
* ``errors``: error and retry rates, counts per status and error type;
* ``calls?order=cost|duration|recent&limit=50&offset=0``: calls' metadata;
* ``budgets``: each virtual key's budget and use in its current period.

USD amounts are exact decimal strings. Bad parameters get a 400 and an
unreadable ledger a 424, both as ``{"error": {"message", "param"}}``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from thrifty.errors import LedgerError
from thrifty.ledger import queries

__all__ = ["COUNTERFACTUALS", "ENDPOINTS", "DashboardAPI", "ParamError", "register_counterfactual"]

log = logging.getLogger("thrifty.dashboard")

DEFAULT_SINCE = "30d"
MAX_LIMIT = 1000
_FILTERS = {"model": "model", "provider": "provider", "key": "key_id", "project": "project", "user": "user",
            "tag": "tag"}
_COMMON = ("since", "until", "format", *_FILTERS)


class ParamError(ValueError):
    """A query parameter the API cannot use; ``param`` names it."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class _Request:
    """The parsed query string: the time range and filters every endpoint shares, and its own params."""

    def __init__(self, query_string: str, allowed: tuple[str, ...], now: datetime) -> None:
        self.now = now
        raw = parse_qs(query_string, keep_blank_values=True)
        for name, values in raw.items():
            if name not in _COMMON and name not in allowed:
                known = ", ".join((*_COMMON, *allowed))
                raise ParamError(f"unknown parameter {name!r}; this endpoint takes: {known}", name)
            if len(values) > 1:
                raise ParamError(f"give {name!r} once, not {len(values)} times", name)
        self.values = {name: values[0] for name, values in raw.items()}
        self.since = self._time("since", self.values.get("since") or DEFAULT_SINCE, now)
        self.until = self._time("until", self.values["until"], now) if self.values.get("until") else None
        if self.until is not None and self.until <= self.since:
            raise ParamError(f"until ({self.until.isoformat()}) must be after since ({self.since.isoformat()})",
                             "until")
        self.filters = queries.Filters(**{field: self.values[name] or None for name, field in _FILTERS.items()
                                          if name in self.values})
        self.format = self.choice("format", ("json", "csv"), "json")

    @staticmethod
    def _time(name: str, text: str, now: datetime) -> datetime:
        try:
            return queries.parse_time(text, now=now)
        except ValueError as exc:
            raise ParamError(str(exc), name) from None

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> Any:
        value = self.values.get(name) or default
        if value is not None and value not in choices:
            raise ParamError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}", name)
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.values.get(name)
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ParamError(f"{name} must be a whole number, not {text!r}", name) from None
        if not low <= value <= high:
            raise ParamError(f"{name} must be between {low} and {high}, not {value}", name)
        return value

    @property
    def range(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "filters": self.filters}


#: an endpoint: (its own parameters, fn(engine, request) -> (JSON body, table rows for CSV))
Endpoint = tuple[tuple[str, ...], Callable[[Engine, _Request], tuple[dict[str, Any], list[dict[str, Any]]]]]


def _summary(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    total = queries.summary(engine, **req.range)
    return {"total": total}, [total]


def _timeseries(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    bucket = req.choice("bucket", queries.TIME_GROUPS, "day")
    report = queries.spend(engine, group_by=bucket, **req.range)
    rows = [
        {
            "bucket": r.group,
            "calls": r.calls,
            "tokens": r.prompt_tokens + r.output_tokens,
            "cost_usd": r.as_dict()["cost_usd"],
            "usd_saved": r.as_dict()["usd_saved"],
        }
        for r in report.rows
    ]
    return {"bucket": bucket, "rows": rows}, rows


def _breakdown(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    by = req.choice("by", queries.BREAKDOWN_BY, "model")
    report = queries.spend(engine, group_by=by, **req.range)
    rows = [r.as_dict() for r in report.rows]
    return {"by": by, "rows": rows, "total": report.total.as_dict()}, rows


#: technique -> what its saving is measured against (the counterfactual); add others with register_counterfactual
COUNTERFACTUALS: dict[str, str] = {}


def register_counterfactual(technique: str, text: str) -> None:
    """Say what ``technique``'s savings are measured against, for the savings view."""
    COUNTERFACTUALS[technique] = text


for _technique, _text in (
    ("compression", "the same prompt sent uncompressed (its tokens before compression)"),
    ("routing", "the same call on the model that was requested"),
    ("contracts", "the same request without its prompt contract"),
    ("structured", "the retries and reasks an unconstrained answer would have needed"),
):
    register_counterfactual(_technique, _text)


def _savings(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = [r.as_dict() for r in queries.savings_by_technique(engine, **req.range)]
    against = {r["technique"]: COUNTERFACTUALS.get(r["technique"]) for r in rows}
    return {"rows": rows, "counterfactuals": against}, [r | {"measured_against": against[r["technique"]]}
                                                        for r in rows]


def _latency(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    by = req.choice("by", ("model",), None)
    rows = queries.latency(engine, by=by, **req.range)
    return {"by": by, "percentiles": list(queries.PERCENTILES), "rows": rows}, rows


def _errors(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out = queries.errors(engine, **req.range)
    return out, out["rows"]


def _calls(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    order = req.choice("order", queries.CALL_ORDERS, "cost")
    limit = req.integer("limit", 50, 1, MAX_LIMIT)
    offset = req.integer("offset", 0, 0, 10**9)
    rows = queries.top_calls(engine, order=order, limit=limit, offset=offset, **req.range)
    rows = [{k: _jsonable(v) for k, v in row.items()} for row in rows]
    return {"order": order, "limit": limit, "offset": offset, "rows": rows}, rows


def _budgets(engine: Engine, req: _Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = queries.budgets(engine, now=req.now)
    return {"rows": rows}, rows


ENDPOINTS: dict[str, Endpoint] = {
    "summary": ((), _summary),
    "timeseries": (("bucket",), _timeseries),
    "breakdown": (("by",), _breakdown),
    "savings": ((), _savings),
    "latency": (("by",), _latency),
    "errors": ((), _errors),
    "calls": (("order", "limit", "offset"), _calls),
    "budgets": ((), _budgets),
}


class DashboardAPI:
    """Answers the API's requests from the ledger behind ``engine`` (synchronously; run it off the loop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checked = False

    def handle(self, endpoint: str, query_string: str, *, now: datetime | None = None) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for ``GET /dashboard/api/<endpoint>?<query_string>``."""
        found = ENDPOINTS.get(endpoint)
        if found is None:
            return _error(404, f"no dashboard API endpoint {endpoint!r}; endpoints: {', '.join(ENDPOINTS)}", None)
        allowed, produce = found
        try:
            req = _Request(query_string, allowed, now or datetime.now(UTC))
            if not self._checked:
                queries.check_ledger(self.engine)
                self._checked = True
            body, table = produce(self.engine, req)
        except ParamError as exc:
            return _error(400, str(exc), exc.param)
        except LedgerError as exc:
            return _error(424, str(exc), "db")
        except DBAPIError as exc:
            self._checked = False
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            return _error(424, f"cannot read the ledger database: {reason}", "db")
        if req.format == "csv":
            return 200, "text/csv; charset=utf-8", _csv(table).encode()
        body = {"since": req.since.isoformat(), "until": req.until.isoformat() if req.until else None, **body}
        return 200, "application/json", json.dumps(body, default=_jsonable).encode()


def _error(status: int, message: str, param: str | None) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps({"error": {"message": message, "param": param}}).encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return queries._plain(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else _jsonable(v) for k, v in row.items()})
    return out.getvalue()
