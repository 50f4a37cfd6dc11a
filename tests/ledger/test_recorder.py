"""The recorder: batching, pricing at write time, idempotency, outages, spill and replay."""

from __future__ import annotations

import asyncio
import fcntl
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import wait_for
from thrifty.errors import LedgerError
from thrifty.ledger.models import LlmCallPayload
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder, price_record
from thrifty.middleware.context import Saving
from thrifty.settings import LedgerSettings

MakeRecorder = Callable[..., Recorder]
MakeRecord = Callable[..., LedgerRecord]
CountRows = Callable[..., int]


def spill_files(data_dir: Path) -> list[Path]:
    return sorted(
        p for p in (data_dir / "ledger-spill").glob("*.jsonl") if not p.name.endswith(".rejected.jsonl")
    )


# ---------------------------------------------------------------- writing


def test_every_fact_round_trips(
    ledger_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, engine_for: Callable
) -> None:
    started = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)
    rec = make_record(
        "call-1",
        started_at=started,
        parent_call_id="call-0",
        attempt=2,
        stream=True,
        ttft_ms=12.5,
        duration_ms=250.25,
        overhead_ms=0.125,
        entry="proxy",
        wire="anthropic",
        provider="anthropic",
        model_requested="claude-x",
        model_used="claude-sonnet-4-5",
        pricing_id="anthropic",
        route_decision="small->large",
        response_id="msg_1",
        key_id="sha256:abcd",
        user="alice",
        project="search",
        tags=["beta", "eu", "beta"],
        input_tokens=1000,
        cache_read_tokens=2000,
        cache_write_tokens=300,
        output_tokens=400,
        reasoning_tokens=50,
        status="ok",
    )
    rec.set_savings(
        {
            "compression": Saving(5000, 3300, detail={"ratio": 0.66}),
            "contracts": Saving(3300, 3300, usd_saved=0.25),
        }
    )
    recorder = make_recorder(ledger_url)
    recorder.submit(rec)
    assert recorder.flush(10)
    engine = engine_for(ledger_url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM llm_calls")).mappings().one()
        tags = sorted(conn.execute(sa.text("SELECT tag FROM llm_call_tags")).scalars())
        savings = {r.technique: r for r in conn.execute(sa.text("SELECT * FROM llm_call_savings"))}
    from thrifty.ledger.models import LlmCall

    with sa.orm.Session(engine) as session:
        call = session.scalars(sa.select(LlmCall)).one()
    assert call.started_at == started and call.started_at.tzinfo is not None
    assert (row["call_id"], row["parent_call_id"], row["attempt"]) == ("call-1", "call-0", 2)
    assert (row["entry"], row["wire"], row["provider"], row["model_used"]) == (
        "proxy",
        "anthropic",
        "anthropic",
        "claude-sonnet-4-5",
    )
    assert (row["key_id"], row["user"], row["project"], row["route_decision"]) == (
        "sha256:abcd",
        "alice",
        "search",
        "small->large",
    )
    assert (row["ttft_ms"], row["duration_ms"], row["overhead_ms"]) == (12.5, 250.25, 0.125)
    assert (
        row["input_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    ) == (1000, 2000, 300, 400, 50)
    assert bool(row["stream"]) is True and row["usage_source"] == "provider"
    assert tags == ["beta", "eu"]
    # priced at write time, exactly
    assert call.price_source == "genai-prices" and call.price_version
    assert isinstance(call.cost_usd, Decimal) and call.cost_usd > 0
    expected = price_record(
        make_record(
            **{k: getattr(rec, k) for k in ("call_id", "started_at")},
            model_used="claude-sonnet-4-5",
            pricing_id="anthropic",
            input_tokens=1000,
            cache_read_tokens=2000,
            cache_write_tokens=300,
            output_tokens=400,
            reasoning_tokens=50,
        )
    )
    assert call.cost_usd == expected
    # savings: totals, and tokens-only savings priced as input tokens of the model used
    assert (call.tokens_before_transforms, call.tokens_saved) == (5000, 1700)
    assert set(savings) == {"compression", "contracts"}
    assert savings["compression"].tokens_saved == 1700
    assert Decimal(str(savings["contracts"].usd_saved)) == Decimal("0.25")
    compression_usd = Decimal(str(savings["compression"].usd_saved))
    assert compression_usd > 0
    assert call.usd_saved == compression_usd + Decimal("0.25")
    detail = savings["compression"].detail
    assert (json.loads(detail) if isinstance(detail, str) else detail) == {"ratio": 0.66}


def test_unpriced_and_local_calls(
    ledger_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, engine_for: Callable
) -> None:
    recorder = make_recorder(ledger_url)
    recorder.submit(make_record("unknown", model_used="no-such-model-xyz", pricing_id="no-such-provider"))
    recorder.submit(
        make_record("local", provider="local", model_used="smollm2", pricing_id=None, is_local=True)
    )
    recorder.submit(make_record("given", cost_usd=Decimal("1.5"), price_source="custom", price_version="v9"))
    assert recorder.flush(10)
    with engine_for(ledger_url).connect() as conn:
        rows = {r.call_id: r for r in conn.execute(sa.text("SELECT * FROM llm_calls"))}
    assert rows["unknown"].cost_usd is None and rows["unknown"].price_source == "unpriced"
    assert Decimal(str(rows["local"].cost_usd)) == 0 and rows["local"].price_source == "local"
    # a record that arrives priced is not priced again
    assert Decimal(str(rows["given"].cost_usd)) == Decimal("1.5")
    assert (rows["given"].price_source, rows["given"].price_version) == ("custom", "v9")


def test_batches_fill_then_write_without_waiting_for_the_interval(
    sqlite_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows
) -> None:
    recorder = make_recorder(sqlite_url, batch_size=10, flush_interval_s=30)
    assert recorder.flush(10)  # the first cycle (schema check) is done
    time.sleep(0.3)  # and the wake-up that flush() sent is used up
    for i in range(9):
        recorder.submit(make_record(f"c{i}"))
    time.sleep(0.3)
    assert count_rows(sqlite_url) == 0  # a partial batch waits for the interval
    recorder.submit(make_record("c9"))  # the batch is full: written now
    assert wait_for(lambda: count_rows(sqlite_url) == 10, timeout=5)
    for i in range(10, 15):
        recorder.submit(make_record(f"c{i}"))
    assert recorder.flush(5)  # flush writes a partial batch
    assert count_rows(sqlite_url) == 15


def test_many_records_in_many_batches(
    ledger_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows
) -> None:
    recorder = make_recorder(ledger_url, batch_size=50)
    for i in range(1234):
        recorder.submit(make_record(f"c{i}", tags=[f"t{i % 3}"]))
    assert recorder.flush(30)
    assert count_rows(ledger_url) == 1234
    assert count_rows(ledger_url, "llm_call_tags") == 1234
    assert recorder.buffered == 0


def test_insert_is_idempotent_by_call_id(
    ledger_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows
) -> None:
    recorder = make_recorder(ledger_url)
    for _ in range(3):
        rec = make_record("same", tags=["a", "b"])
        rec.set_savings({"compression": Saving(10, 5)})
        recorder.submit(rec)
        assert recorder.flush(10)
    assert count_rows(ledger_url) == 1
    assert count_rows(ledger_url, "llm_call_tags") == 2
    assert count_rows(ledger_url, "llm_call_savings") == 1


def test_submit_is_thread_safe(
    ledger_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows
) -> None:
    recorder = make_recorder(ledger_url, batch_size=64)

    def work(n: int) -> None:
        for i in range(250):
            recorder.submit(make_record(f"t{n}-{i}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.flush(30)
    assert count_rows(ledger_url) == 2000


async def test_submit_from_inside_an_event_loop(
    sqlite_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows
) -> None:
    recorder = make_recorder(sqlite_url)

    async def call(i: int) -> None:
        await asyncio.sleep(0)
        recorder.submit(make_record(f"a{i}"))

    started = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(200)))
    assert time.perf_counter() - started < 1.0  # never blocks the loop on the database
    assert await asyncio.to_thread(recorder.flush, 10)
    assert count_rows(sqlite_url) == 200


def test_submit_never_raises_and_a_refused_record_is_set_aside(
    ledger_url: str,
    make_recorder: MakeRecorder,
    make_record: MakeRecord,
    count_rows: CountRows,
    tmp_path: Path,
) -> None:
    recorder = make_recorder(ledger_url, data_dir=tmp_path / "d")
    recorder.submit(make_record("good-1"))
    recorder.submit(make_record("too-big", input_tokens=2**70))  # no database takes that integer
    recorder.submit("not a record")  # type: ignore[arg-type]
    recorder.submit(make_record("good-2"))
    assert recorder.flush(10)
    assert count_rows(ledger_url) == 2
    assert recorder.rejected == 2
    rejected = (tmp_path / "d" / "ledger-spill").glob("*.rejected.jsonl")
    lines = [line for path in rejected for line in path.read_text().splitlines()]
    assert len(lines) == 2 and any('"too-big"' in line for line in lines)


def test_bad_url_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="invalid ledger database URL"):
        Recorder("nonsense", LedgerSettings(), data_dir=tmp_path).start()


def test_prompts_are_not_stored_by_default(
    sqlite_url: str, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows
) -> None:
    recorder = make_recorder(sqlite_url)
    recorder.submit(make_record("p", prompt={"messages": ["secret"]}, response={"text": "x"}))
    assert recorder.flush(10)
    assert count_rows(sqlite_url) == 1
    assert count_rows(sqlite_url, "llm_call_payloads") == 0


def test_prompts_stored_when_opted_in_and_expired_by_retention(
    ledger_url: str,
    make_recorder: MakeRecorder,
    make_record: MakeRecord,
    engine_for: Callable,
    count_rows: CountRows,
) -> None:
    recorder = make_recorder(ledger_url, store_prompts=True, prompt_retention_days=30)
    now = datetime.now(UTC)
    recorder.submit(make_record("new", started_at=now, prompt={"messages": ["hi"]}, response={"text": "yo"}))
    recorder.submit(make_record("old", started_at=now - timedelta(days=31), prompt={"messages": ["old"]}))
    assert recorder.flush(10)
    with engine_for(ledger_url).connect() as conn:
        rows = {r.call_id: r for r in conn.execute(sa.text("SELECT * FROM llm_call_payloads"))}
    assert set(rows) == {"new"}  # already past its retention: never stored
    request = rows["new"].request
    assert (json.loads(request) if isinstance(request, str) else request) == {"messages": ["hi"]}
    expires = rows["new"].expires_at
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    assert abs(expires.replace(tzinfo=UTC) - (now + timedelta(days=30))) < timedelta(seconds=1)
    recorder.close()
    # retention runs when a recorder starts (and hourly): an expired payload goes, its call stays
    with engine_for(ledger_url).begin() as conn:
        conn.execute(sa.update(LlmCallPayload.__table__).values(expires_at=now - timedelta(days=1)))
    again = make_recorder(ledger_url, store_prompts=True, prompt_retention_days=30)
    assert again.flush(10)
    assert wait_for(lambda: count_rows(ledger_url, "llm_call_payloads") == 0)
    assert count_rows(ledger_url) == 2


# ---------------------------------------------------------------- outages, spill and replay


def test_database_taken_away_mid_run_loses_no_row(
    outage: Any, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    recorder = make_recorder(
        outage.url, data_dir=data_dir, batch_size=20, max_buffer_rows=50, **outage.recorder_options
    )
    for i in range(30):
        recorder.submit(make_record(f"before-{i}"))
    assert recorder.flush(10)

    outage.take_away()
    stop = threading.Event()
    submitted: list[str] = []

    def traffic() -> None:  # calls keep coming while the database is away
        i = 0
        while not stop.is_set() or i < 300:
            call_id = f"during-{i}"
            recorder.submit(make_record(call_id))
            submitted.append(call_id)
            i += 1
            time.sleep(0.001)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        assert wait_for(lambda: not recorder.healthy, timeout=10)
        assert not recorder.flush(0.3)  # cannot be written now
        assert wait_for(lambda: recorder.spilled > 0, timeout=10)  # past max_buffer_rows: spilled
        assert spill_files(data_dir)
        assert recorder.buffered <= 50 + 150  # memory stays bounded while down
    finally:
        stop.set()
        thread.join()
        outage.give_back()
    assert recorder.flush(30)
    assert recorder.healthy
    assert count_rows(outage.url) == 30 + len(submitted)
    assert count_rows(outage.url, "llm_calls", "WHERE call_id LIKE 'during-%'") == len(submitted)
    assert recorder.spilled == 0 and spill_files(data_dir) == []


def test_close_while_down_spills_and_the_next_start_replays(
    outage: Any, make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    recorder = make_recorder(outage.url, data_dir=data_dir, **outage.recorder_options)
    assert recorder.flush(10)
    outage.take_away()
    try:
        for i in range(40):
            rec = make_record(f"c{i}", tags=["x"], prompt=None)
            rec.set_savings({"compression": Saving(100, 60)})
            recorder.submit(rec)
        assert wait_for(lambda: not recorder.healthy, timeout=10)
        recorder.close(timeout=2)
        files = spill_files(data_dir)
        assert len(files) == 1
        assert sum(len(f.read_text().splitlines()) for f in files) == 40
        recorder.submit(make_record("after-close"))  # still never lost: straight to a spill file
        assert sum(len(f.read_text().splitlines()) for f in spill_files(data_dir)) == 41
    finally:
        outage.give_back()
    again = make_recorder(outage.url, data_dir=data_dir, **outage.recorder_options)
    assert wait_for(lambda: count_rows(outage.url) == 41, timeout=20)
    assert again.flush(10)
    assert count_rows(outage.url, "llm_call_tags") == 40
    assert count_rows(outage.url, "llm_call_savings") == 40
    assert spill_files(data_dir) == []


def test_replay_never_duplicates(
    ledger_url: str,
    make_recorder: MakeRecorder,
    make_record: MakeRecord,
    count_rows: CountRows,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = make_recorder(ledger_url, data_dir=data_dir)
    records = [make_record(f"c{i}", tags=["t"]) for i in range(10)]
    for rec in records[:5]:
        first.submit(rec)
    assert first.flush(10)
    first.close()
    # a spill file holding rows already written and new ones (a crash between write and delete)
    spill_dir = data_dir / "ledger-spill"
    spill_dir.mkdir(parents=True, exist_ok=True)
    (spill_dir / f"{first._spill_prefix}.99999.deadbeef.jsonl").write_text(
        "".join(r.to_json() + "\n" for r in records) + '{"torn line'
    )
    second = make_recorder(ledger_url, data_dir=data_dir)
    assert wait_for(lambda: count_rows(ledger_url) == 10, timeout=10)
    assert second.flush(10)
    assert count_rows(ledger_url, "llm_call_tags") == 10
    assert spill_files(data_dir) == []
    assert second.rejected == 1  # the torn line is set aside, not silently dropped


def test_a_live_writers_spill_file_is_left_to_it(
    sqlite_url: str,
    make_recorder: MakeRecorder,
    make_record: MakeRecord,
    count_rows: CountRows,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    probe = Recorder(sqlite_url, LedgerSettings(), data_dir=data_dir)
    spill_dir = data_dir / "ledger-spill"
    spill_dir.mkdir(parents=True)
    path = spill_dir / f"{probe._spill_prefix}.12345.cafebabe.jsonl"
    path.write_text(make_record("from-a-live-process").to_json() + "\n")
    with open(path) as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # its writer is alive
        recorder = make_recorder(sqlite_url, data_dir=data_dir)
        assert recorder.flush(10)
        assert count_rows(sqlite_url) == 0 and path.exists()
    recorder.close()
    make_recorder(sqlite_url, data_dir=data_dir)  # the writer is gone: the next start replays it
    assert wait_for(lambda: count_rows(sqlite_url) == 1)
    assert wait_for(lambda: not path.exists())


def test_unreachable_at_start_then_reachable(
    make_recorder: MakeRecorder, make_record: MakeRecord, count_rows: CountRows, pg_server: Any
) -> None:
    url = pg_server.create()  # not migrated, and not accepting connections
    pg_server.take_away(url)
    try:
        recorder = make_recorder(url)
        recorder.submit(make_record("early"))
        assert wait_for(lambda: not recorder.healthy, timeout=15)
    finally:
        pg_server.give_back(url)
    assert recorder.flush(30)  # migrates, then writes
    assert count_rows(url) == 1


test_unreachable_at_start_then_reachable = pytest.mark.postgres(test_unreachable_at_start_then_reachable)


def test_flush_on_interpreter_exit(sqlite_url: str, tmp_path: Path, count_rows: CountRows) -> None:
    script = f"""
import uuid
from datetime import UTC, datetime
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder
from thrifty.settings import LedgerSettings

recorder = Recorder({sqlite_url!r}, LedgerSettings(flush_interval_s=60), data_dir={str(tmp_path / "d")!r}).start()
for i in range(25):
    recorder.submit(LedgerRecord(call_id=f"exit-{{i}}", started_at=datetime.now(UTC), entry="wrapper",
                                 wire="openai", model_used="gpt-4o-mini", input_tokens=1))
# no close(), no flush(): atexit writes them
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # logs, never prints
    assert count_rows(sqlite_url) == 25


def test_record_json_round_trip(make_record: MakeRecord) -> None:
    rec = make_record(
        "j",
        cost_usd=Decimal("0.000000075"),
        price_source="genai-prices",
        tags=["a"],
        usd_saved=Decimal("0.1"),
    )
    rec.set_savings({"compression": Saving(10, 4, usd_saved=0.1, detail={"k": [1, 2]})})
    back = LedgerRecord.from_json(rec.to_json())
    assert back.cost_usd == Decimal("0.000000075")
    assert back.started_at == rec.started_at
    assert back.savings["compression"].tokens_saved == 6
    assert back.savings["compression"].usd_saved == Decimal("0.1")
    assert back.savings["compression"].detail == {"k": [1, 2]}
    assert back.tags == ["a"]
