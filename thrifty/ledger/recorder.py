"""The recorder: writes ledger records in batches, off the request path, and never loses one.

:meth:`Recorder.submit` appends to an in-memory queue (O(1), thread-safe, never
raises) and returns. A background thread takes batches of up to
``ledger.batch_size`` records every ``ledger.flush_interval_s`` (sooner when a
batch is full), prices the records that have no cost yet, and inserts them in
one transaction, together with the dashboard's rollups
(:mod:`thrifty.ledger.rollup`). Inserts are idempotent by ``call_id`` (``ON CONFLICT DO
NOTHING``), so writing a record twice never duplicates it. An empty provider,
model, key, user, project or error type is stored as NULL.

When the database is unavailable the records stay buffered and the thread
retries every ``ledger.retry_interval_s``. Past ``ledger.max_buffer_rows``
buffered records, the oldest are spilled to a JSONL file under
``<data_dir>/ledger-spill/`` and written from there once the database is back.
On :meth:`Recorder.close` (and at interpreter exit, as a last resort) whatever
could not be written is spilled too, and the next recorder started for the
same database replays it. A record the database refuses outright (not an
outage: a bad value) is set aside in a ``.rejected.jsonl`` file, with an error
logged, instead of blocking the rest.

Spill files are per process (``<url hash>.<pid>.<random>.jsonl``) and held with
an exclusive ``flock`` while their writer lives, so processes sharing a data
directory replay only files whose writer is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from thrifty.ledger import rollup
from thrifty.ledger.models import STRING_LIMITS, calls_table, payloads_table, savings_table, tags_table
from thrifty.ledger.record import LedgerRecord, jsonable
from thrifty.settings import LedgerSettings, Settings, default_data_dir
from thrifty.types import Usage

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Recorder", "price_record"]

log = logging.getLogger("thrifty.ledger")

_PAYLOAD_PURGE_EVERY_S = 3600.0
# PostgreSQL SQLSTATE: undefined_table (the schema went away under us: migrate again, then retry)
_UNDEFINED_TABLE = "42P01"


class _Marker:
    """Put in the queue by :meth:`Recorder.flush`; set once everything before it is written."""

    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = True  # False: released by close() with records spilled, not written


def price_record(record: LedgerRecord) -> Decimal | None:
    """Price ``record`` in place (cost, price source and version, and savings in USD).

    Savings a technique reported in tokens only are priced as input tokens of
    the model used. Never raises: a model that cannot be priced, or a pricing
    failure, leaves ``cost_usd`` ``None`` with ``price_source = "unpriced"``.
    Returns the cost.
    """
    model = record.model_used or record.model_requested or ""
    try:
        from thrifty.ledger import pricing

        result = pricing.price(
            record.usage, model, pricing_id=record.pricing_id, is_local=record.is_local, at=record.started_at
        )
        cost, source, version = result.cost_usd, result.source, result.version
    except Exception as exc:  # noqa: BLE001 - an unpriceable row is still a row
        log.warning("could not price ledger call %s (model %r): %s", record.call_id, model, exc)
        cost, source, version = None, "unpriced", None
    record.cost_usd, record.price_source, record.price_version = cost, source, version
    if record.savings and cost is not None:
        priced = {}
        for name, saving in record.savings.items():
            if saving.usd_saved is None and saving.tokens_saved:
                usd = _price_input_tokens(saving.tokens_saved, model, record)
                if usd is not None:
                    saving = replace(saving, usd_saved=usd)  # type: ignore[arg-type]
            priced[name] = saving
        record.savings = priced
        usd_values = [s.usd_saved for s in priced.values() if s.usd_saved is not None]
        record.usd_saved = sum((_dec(u) for u in usd_values), Decimal(0)) if usd_values else None
    return cost


def _price_input_tokens(tokens: int, model: str, record: LedgerRecord) -> Decimal | None:
    try:
        from thrifty.ledger import pricing

        result = pricing.price(
            Usage(input_tokens=abs(tokens)),
            model,
            pricing_id=record.pricing_id,
            is_local=record.is_local,
            at=record.started_at,
        )
    except Exception:  # noqa: BLE001
        return None
    if result.cost_usd is None:
        return None
    return result.cost_usd if tokens > 0 else -result.cost_usd


def _dec(value: float | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


class Recorder:
    """Writes :class:`LedgerRecord` s to the ledger at ``url`` from a background thread.

    ``data_dir`` holds the spill files; by default the directory of a SQLite
    ledger file, else :func:`thrifty.settings.default_data_dir`. Use
    :meth:`from_settings` to take both from :class:`~thrifty.settings.Settings`.
    ``busy_timeout_s`` is how long a SQLite write waits for a lock held by another process.
    """

    def __init__(
        self,
        url: str,
        settings: LedgerSettings | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        busy_timeout_s: float = 5.0,
    ) -> None:
        from thrifty.ledger.db import _parse

        self.url = url
        self.settings = settings or LedgerSettings()
        self._busy_timeout_s = busy_timeout_s
        self._spill_dir = _data_dir(url, data_dir) / "ledger-spill"
        # spill files are named by the database they belong to (without its password)
        identity = _parse(url).set(password=None).render_as_string(hide_password=False)
        self._spill_prefix = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self._queue: deque[LedgerRecord | _Marker] = deque()
        self._pending: list[LedgerRecord] = []  # a batch whose write failed (worker thread only)
        self._waiting: list[_Marker] = []  # flush markers past which everything is taken
        self._wake = threading.Event()
        self._wake_at = self.settings.batch_size
        self._spill_lock = threading.RLock()
        self._spill_file: IO[str] | None = None  # the file spills go to now (held with flock)
        self._spill_path: Path | None = None
        self._spill_rows_now = 0  # records in that file
        self._own_files: dict[Path, int] = {}  # earlier spill files of ours, closed, to replay
        self._own_rows = 0  # records in those files
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._ready = False
        self._healthy = True
        self._next_try = 0.0
        self._replayed_others = False
        self._last_purge = 0.0
        self._stopping = False
        self._closed = False
        self.written = 0
        self.rejected = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Recorder:
        return cls(settings.ledger_url, settings.ledger, data_dir=settings.data_dir)

    # ------------------------------------------------------------ public API

    @property
    def store_prompts(self) -> bool:
        return self.settings.store_prompts

    @property
    def healthy(self) -> bool:
        """False while the database is unreachable (records are being buffered)."""
        return self._healthy

    @property
    def buffered(self) -> int:
        """Records in memory not yet written."""
        return len(self._queue) + len(self._pending)

    @property
    def spilled(self) -> int:
        """Records this recorder spilled to its file and has not written yet."""
        return self._spilled_rows

    @property
    def _spilled_rows(self) -> int:
        return self._spill_rows_now + self._own_rows

    @property
    def spill_dir(self) -> Path:
        return self._spill_dir

    def start(self) -> Recorder:
        """Start the writer thread. Raises :class:`~thrifty.errors.LedgerError` for a bad URL.

        An unreachable database is not an error here: records are buffered until it answers.
        """
        if self._thread is not None:
            return self
        if self._closed:
            raise RuntimeError("a closed Recorder cannot be restarted; make a new one")
        from thrifty.ledger.db import create_engine

        self._engine = create_engine(self.url, busy_timeout_s=self._busy_timeout_s)
        self._thread = threading.Thread(target=self._run, name="thrifty-ledger-recorder", daemon=True)
        self._thread.start()
        atexit.register(self._atexit)
        return self

    def submit(self, record: LedgerRecord) -> None:
        """Queue ``record`` for writing. O(1), thread-safe, never raises, never blocks."""
        try:
            queue = self._queue
            queue.append(record)
            if len(queue) >= self._wake_at:
                self._wake.set()
            if self._closed:  # submitted after close: straight to a spill file, left for the next start
                with self._spill_lock:
                    self._spill_queue()
                    self._close_spill_file()
        except Exception:
            log.exception("ledger: could not queue call %s", getattr(record, "call_id", "?"))

    def price(self, record: LedgerRecord) -> Decimal | None:
        """Price ``record`` now, in place (for an entry that must answer with the cost)."""
        return price_record(record)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is in the database.

        Returns False if that did not happen within ``timeout`` seconds (the
        database is down, say); the records are still buffered or spilled.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return not self._queue and not self._pending and not self._spilled_rows
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        return marker.event.wait(timeout) and marker.ok

    def close(self, timeout: float = 10.0) -> None:
        """Write what can be written within ``timeout`` seconds, spill the rest, stop."""
        if self._closed:
            return
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._closed = True
        with self._spill_lock:
            if thread is None or not thread.is_alive():
                leftovers, self._pending = self._pending, []
            else:  # still inside a database call: spill its batch too (re-writing it is harmless)
                log.warning("ledger: writer still busy after %.1fs; spilling what it holds", timeout)
                leftovers = list(self._pending)
            self._spill(leftovers)
            self._spill_queue()
            self._close_spill_file()
            # flush() callers wait no longer: True only if nothing was left for a later start
            all_written = not self._spilled_rows
            for marker in self._waiting:
                marker.ok = all_written
                marker.event.set()
            self._waiting.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit)
        if self._engine is not None and (thread is None or not thread.is_alive()):
            self._engine.dispose()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _atexit(self) -> None:
        try:
            self.close(timeout=5.0)
        except Exception:
            log.exception("ledger: error while closing the recorder at exit")

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            stopping = self._stopping
            try:
                self._cycle(final=stopping)
            except Exception:
                log.exception("ledger: unexpected error in the recorder")
            if stopping:
                return
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()

    def _cycle(self, *, final: bool) -> None:
        if not self._healthy and time.monotonic() < self._next_try and not final:
            self._overflow()
            return
        if not self._ready and not self._ensure_schema():
            self._overflow()
            return
        budget = len(self._queue)  # what is here now; a busy stream of submits must not pin us
        while self._pending or budget > 0:
            if self._pending:
                batch = self._pending
            else:
                batch, taken = self._take(min(budget, self.settings.batch_size))
                budget -= taken
                if not batch:
                    if not taken:
                        break
                    self._release_markers()  # only flush markers were taken
                    continue
            left = self._write(batch)
            if left:
                self._pending = left
                self._overflow()
                return
            self._pending = []
            self._release_markers()
        if self._spilled_rows and not self._replay_own():
            return
        if not self._replayed_others:
            self._replayed_others = self._replay_others()
        self._release_markers()
        self._purge_payloads()

    def _take(self, n: int | None) -> tuple[list[LedgerRecord], int]:
        """Up to ``n`` queued items (all of them for None): the records, and how many items
        (markers included) were taken."""
        batch: list[LedgerRecord] = []
        queue = self._queue
        taken = 0
        while n is None or taken < n:
            try:
                item = queue.popleft()
            except IndexError:
                break
            taken += 1
            if isinstance(item, _Marker):
                self._waiting.append(item)  # released once everything before it is written
            else:
                batch.append(item)
        return batch, taken

    def _release_markers(self) -> None:
        if self._waiting and not self._pending and not self._spilled_rows:
            for marker in self._waiting:
                marker.event.set()
            self._waiting.clear()

    def _ensure_schema(self) -> bool:
        from thrifty.ledger.migrations import migrate

        assert self._engine is not None
        try:
            migrate(self._engine)
        except Exception as exc:  # noqa: BLE001
            self._went_down(exc)
            return False
        self._ready = True
        self._came_back()
        return True

    def _went_down(self, exc: BaseException) -> None:
        if self._healthy:
            log.warning(
                "ledger database %s unavailable (%s); buffering calls and retrying every %ss",
                _redacted(self.url),
                _reason(exc),
                self.settings.retry_interval_s,
            )
        else:
            log.debug("ledger database still unavailable: %s", _reason(exc))
        self._healthy = False
        self._ready = False  # check the schema again when it is back
        self._next_try = time.monotonic() + self.settings.retry_interval_s
        self._wake_at = self.settings.max_buffer_rows

    def _came_back(self) -> None:
        if not self._healthy:
            log.warning("ledger database %s is back; writing buffered calls", _redacted(self.url))
        self._healthy = True
        self._wake_at = self.settings.batch_size

    # ------------------------------------------------------------ writing

    def _write(self, batch: list[LedgerRecord]) -> list[LedgerRecord]:
        """Write ``batch``; returns the records left unwritten by an outage (empty: all done)."""
        try:
            self._insert(batch)
        except Exception as exc:  # noqa: BLE001
            if self._transient(exc):
                self._went_down(exc)
                return batch
            if len(batch) == 1:
                self._reject(batch, exc)
                return []
            # the database refuses some record: write them one by one to find it
            for i, record in enumerate(batch):
                try:
                    self._insert([record])
                except Exception as one_exc:  # noqa: BLE001
                    if self._transient(one_exc):
                        self._went_down(one_exc)
                        return batch[i:]
                    self._reject([record], one_exc)
            self._came_back()
            return []
        self._came_back()
        return []

    def _transient(self, exc: BaseException) -> bool:
        """An outage (retry later) rather than a record the database refuses."""
        if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError):
            return True
        if isinstance(exc, DBAPIError):
            if exc.connection_invalidated:
                return True
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            if code == _UNDEFINED_TABLE:
                return True
        return False

    def _insert(self, batch: list[LedgerRecord]) -> None:
        for record in batch:
            if record.price_source is None:
                price_record(record)
        calls, savings, tags, payloads = self._rows(batch)
        assert self._engine is not None
        with self._engine.begin() as conn:
            rolls_up = conn.dialect.name in rollup.DIALECTS
            if rolls_up:
                rollup.lock(conn)
            fresh = _insert_ignoring_duplicates(conn, calls_table, calls, ("call_id",))
            if fresh is not None:  # a backend without ON CONFLICT: skip the children of old rows
                savings = [r for r in savings if r["call_id"] in fresh]
                tags = [r for r in tags if r["call_id"] in fresh]
                payloads = [r for r in payloads if r["call_id"] in fresh]
            _insert_ignoring_duplicates(conn, savings_table, savings, ("call_id", "technique"))
            _insert_ignoring_duplicates(conn, tags_table, tags, ("call_id", "tag"))
            _insert_ignoring_duplicates(conn, payloads_table, payloads, ("call_id",))
            if rolls_up:  # the dashboard's rollups, in the same transaction
                rollup.catch_up(conn)
        self.written += len(batch)

    def _rows(
        self, batch: list[LedgerRecord]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        calls, savings, tags, payloads = [], [], [], []
        store_prompts = self.settings.store_prompts
        now = datetime.now(UTC)
        retention = timedelta(days=self.settings.prompt_retention_days)
        for r in batch:
            call_id = _cut(r.call_id, "call_id")
            started_at = r.started_at if r.started_at.tzinfo is not None else r.started_at.replace(tzinfo=UTC)
            calls.append(
                {
                    "call_id": call_id,
                    "parent_call_id": _cut(r.parent_call_id, "call_id"),
                    "attempt": r.attempt,
                    "started_at": started_at,
                    "ttft_ms": r.ttft_ms,
                    "duration_ms": r.duration_ms,
                    "overhead_ms": r.overhead_ms,
                    "entry": _cut(r.entry, "entry"),
                    "wire": _cut(r.wire, "wire"),
                    "stream": bool(r.stream),
                    "provider": _cut(r.provider, "provider") or None,
                    "model_requested": _cut(r.model_requested, "model"),
                    "model_used": _cut(r.model_used, "model") or None,
                    "route_decision": _cut(r.route_decision, "route_decision"),
                    "response_id": _cut(r.response_id, "response_id"),
                    "key_id": _cut(r.key_id, "key_id") or None,
                    "user": _cut(r.user, "user") or None,
                    "project": _cut(r.project, "project") or None,
                    "input_tokens": r.input_tokens,
                    "cache_read_tokens": r.cache_read_tokens,
                    "cache_write_tokens": r.cache_write_tokens,
                    "output_tokens": r.output_tokens,
                    "reasoning_tokens": r.reasoning_tokens,
                    "usage_source": _cut(r.usage_source, "usage_source"),
                    "cost_usd": r.cost_usd,
                    "price_source": _cut(r.price_source or "unpriced", "price_source"),
                    "price_version": _cut(r.price_version, "price_version"),
                    "tokens_before_transforms": r.tokens_before_transforms,
                    "tokens_saved": r.tokens_saved,
                    "usd_saved": r.usd_saved,
                    "status": _cut(r.status, "status"),
                    "error_type": _cut(r.error_type, "error_type") or None,
                    "http_status": r.http_status,
                }
            )
            for technique, s in r.savings.items():
                savings.append(
                    {
                        "call_id": call_id,
                        "technique": _cut(technique, "technique"),
                        "tokens_before": s.tokens_before,
                        "tokens_after": s.tokens_after,
                        "tokens_saved": s.tokens_before - s.tokens_after,
                        "usd_saved": None if s.usd_saved is None else _dec(s.usd_saved),
                        "detail": jsonable(s.detail) if s.detail else None,
                    }
                )
            for tag in dict.fromkeys(_cut(t, "tag") for t in r.tags if t):
                tags.append({"call_id": call_id, "tag": tag})
            expires_at = started_at + retention
            if store_prompts and (r.prompt is not None or r.response is not None) and expires_at > now:
                payloads.append(
                    {
                        "call_id": call_id,
                        "stored_at": now,
                        "expires_at": expires_at,
                        "request": jsonable(r.prompt),
                        "response": jsonable(r.response),
                    }
                )
        return calls, savings, tags, payloads

    def _purge_payloads(self) -> None:
        now = time.monotonic()
        if self._last_purge and now - self._last_purge < _PAYLOAD_PURGE_EVERY_S:
            return
        self._last_purge = now
        assert self._engine is not None
        table = payloads_table
        try:
            with self._engine.begin() as conn:
                gone = conn.execute(sa.delete(table).where(table.c.expires_at < datetime.now(UTC))).rowcount
            if gone:
                log.info("ledger: deleted %d stored prompts past their retention", gone)
        except Exception as exc:  # noqa: BLE001 - retention runs again next hour
            log.warning("ledger: could not purge expired prompts: %s", _reason(exc))

    # ------------------------------------------------------------ spilling

    def _overflow(self) -> None:
        """While the database is away, keep at most ``max_buffer_rows`` in memory; spill the oldest."""
        limit = self.settings.max_buffer_rows
        if len(self._pending) + len(self._queue) <= limit:
            return
        with self._spill_lock:
            spill, self._pending = self._pending, []
            spill += self._take(len(self._queue) - limit // 2)[0]
            if not self._spill(spill):
                self._pending = spill  # could not spill either: keep them in memory

    def _spill_queue(self) -> None:
        with self._spill_lock:
            records, _ = self._take(None)
            if not self._spill(records):
                self._queue.extend(records)

    def _spill(self, records: list[LedgerRecord]) -> bool:
        """Append ``records`` to this recorder's spill file; False if that failed."""
        if not records:
            return True
        with self._spill_lock:
            try:
                if self._spill_file is None:
                    self._spill_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{self._spill_prefix}.{os.getpid()}.{uuid.uuid4().hex[:8]}.jsonl"
                    self._spill_path = self._spill_dir / name
                    self._spill_file = open(self._spill_path, "a", encoding="utf-8")  # noqa: SIM115
                    if fcntl is not None:
                        fcntl.flock(self._spill_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._spill_file.write("".join(r.to_json() + "\n" for r in records))
                self._spill_file.flush()
                os.fsync(self._spill_file.fileno())
            except Exception:
                log.exception(
                    "ledger: could not spill %d calls to %s; keeping them in memory",
                    len(records),
                    self._spill_dir,
                )
                return False
            self._spill_rows_now += len(records)
            log.warning("ledger: spilled %d calls to %s", len(records), self._spill_path)
            return True

    def _close_spill_file(self) -> None:
        """Close the current spill file (releasing its flock); it stays on the list to replay."""
        with self._spill_lock:
            if self._spill_file is not None and self._spill_path is not None:
                self._spill_file.close()
                self._own_files[self._spill_path] = self._spill_rows_now
                self._own_rows += self._spill_rows_now
            self._spill_file = None
            self._spill_path = None
            self._spill_rows_now = 0

    def _replay_own(self) -> bool:
        """Write the files this recorder spilled to; True when none is left."""
        self._close_spill_file()  # new spills (if the database goes again) start a new file
        for path in list(self._own_files):
            outcome = self._replay_file(path)
            if outcome == "retry":
                return False
            if outcome == "done":
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            # "unreadable": the file stays for a later start to try; this recorder lets it go
            with self._spill_lock:
                self._own_rows -= self._own_files.pop(path, 0)
        return True

    def _replay_others(self) -> bool:
        """Write spill files left by recorders that are gone; True when none is left to try."""
        try:
            paths = sorted(self._spill_dir.glob(f"{self._spill_prefix}.*.jsonl"))
        except OSError:
            return True
        for path in paths:
            if path == self._spill_path or path in self._own_files or path.name.endswith(".rejected.jsonl"):
                continue
            try:
                handle = open(path, encoding="utf-8")  # noqa: SIM115
            except OSError:
                continue  # replayed by someone else meanwhile
            with handle:
                if fcntl is not None:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # its writer is alive and will write it itself
                log.info("ledger: replaying spilled calls from %s", path)
                outcome = self._replay_file(path)
                if outcome == "retry":
                    return False
                if outcome == "done":
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        return True

    def _replay_file(self, path: Path) -> str:
        """Write the records of a spill file: "done", "retry" (an outage) or "unreadable"."""
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line for line in f if line.strip()]
        except FileNotFoundError:
            return "done"  # replayed by another process meanwhile
        except OSError as exc:
            log.error("ledger: cannot read spill file %s (%s); it is left for a later start", path, exc)
            return "unreadable"
        records: list[LedgerRecord] = []
        for line in lines:
            try:
                records.append(LedgerRecord.from_json(line))
            except Exception as exc:  # noqa: BLE001 - a torn last line after a crash
                self._reject_lines([line], exc)
        size = self.settings.batch_size
        for start in range(0, len(records), size):
            if self._write(records[start : start + size]):
                return "retry"  # the database went away again; the file stays
        return "done"

    def _reject(self, records: Iterable[LedgerRecord], exc: BaseException) -> None:
        lines = []
        for r in records:
            try:
                lines.append(r.to_json())
            except Exception:  # noqa: BLE001
                lines.append(repr(r))
        self._reject_lines(lines, exc)

    def _reject_lines(self, lines: list[str], exc: BaseException) -> None:
        self.rejected += len(lines)
        path = self._spill_dir / f"{self._spill_prefix}.rejected.jsonl"
        try:
            self._spill_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(line.rstrip("\n") + "\n" for line in lines))
            log.error(
                "ledger: the database refused %d call(s) (%s); set aside in %s",
                len(lines),
                _reason(exc),
                path,
            )
        except OSError:
            log.exception(
                "ledger: the database refused %d call(s) and they could not be set aside", len(lines)
            )


def _insert_ignoring_duplicates(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], key: tuple[str, ...]
) -> set[str] | None:
    """INSERT, skipping rows whose ``key`` exists. Returns the new call ids where it had to look them up."""
    if not rows:
        return None
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        conn.execute(postgresql.insert(table).on_conflict_do_nothing(index_elements=list(key)), rows)
        return None
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        conn.execute(sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key)), rows)
        return None
    # other backends: look the keys up first (the ledger is written by one thread per process)
    cols = [table.c[k] for k in key]
    if len(key) == 1:
        wanted = {r[key[0]] for r in rows}
        found = set(conn.execute(sa.select(cols[0]).where(cols[0].in_(wanted))).scalars())
        unique: dict[Any, dict[str, Any]] = {}
        for r in rows:
            if r[key[0]] not in found:
                unique.setdefault(r[key[0]], r)
        if unique:
            conn.execute(sa.insert(table), list(unique.values()))
        return set(unique)
    call_ids = {r["call_id"] for r in rows}
    found_pairs = set(conn.execute(sa.select(*cols).where(table.c.call_id.in_(call_ids))).tuples())
    fresh = [r for r in rows if tuple(r[k] for k in key) not in found_pairs]
    if fresh:
        conn.execute(sa.insert(table), fresh)
    return None


def _data_dir(url: str, data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    from thrifty.ledger.db import sqlite_path

    try:
        path = sqlite_path(url) if url.startswith("sqlite") else None
    except Exception:  # noqa: BLE001 - a bad URL is reported by start()
        path = None
    return path.parent if path is not None else default_data_dir()


def _cut(value: str | None, kind: str) -> str | None:
    if value is None:
        return None
    limit = STRING_LIMITS[kind]
    return value if len(value) <= limit else value[:limit]


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def _redacted(url: str) -> str:
    from thrifty.ledger.db import redacted

    return redacted(url)
