"""``thrifty serve`` as a user runs it: a subprocess that answers, and flushes its ledger when stopped."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from thrifty.testing import REPLY

MSG = [{"role": "user", "content": "hello"}]
THRIFTY = str(Path(sys.executable).parent / "thrifty")  # the console script, as a user runs it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args: list[str], data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "THRIFTY_DATA_DIR": str(data_dir)}
    process = subprocess.Popen([THRIFTY, "serve", "--port", str(port), *args],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"thrifty serve exited: {process.stdout.read()}")
        try:
            if httpx2.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx2.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("thrifty serve did not start in 60 s")


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    return out


def ledger(data_dir: Path) -> list[tuple]:
    with sqlite3.connect(data_dir / "ledger.db") as db:
        return db.execute("SELECT model_requested, status, output_tokens FROM llm_calls").fetchall()


@pytest.fixture
def config(tmp_path, upstream) -> Path:
    path = tmp_path / "thrifty.toml"
    path.write_text(f'default_provider = "canned"\n[providers.canned]\nkind = "openai-compatible"\n'
                    f'base_url = "{upstream.url}"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_and_flushes_the_ledger_on_exit(tmp_path, config, workers):
    data_dir = tmp_path / "data"
    process, url = serve(["--config", str(config), "--workers", str(workers)], data_dir)
    try:
        for _ in range(3):
            r = httpx2.post(url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, timeout=10)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REPLY
    finally:
        out = stop(process)
    assert f"{url}/v1" in out and f"{url}/dashboard" in out  # where the API and the dashboard are
    assert [row[1] for row in ledger(data_dir)] == ["ok"] * 3


def test_a_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'many'\n", encoding="utf-8")
    done = subprocess.run([THRIFTY, "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "server.port" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.model
def test_serve_on_a_fresh_machine_answers_with_the_embedded_model(tmp_path):
    data_dir = tmp_path / "data"
    process, url = serve([], data_dir)
    try:
        r = httpx2.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "gpt-4o-mini", "messages": MSG, "max_tokens": 4})
        assert r.status_code == 200 and r.json()["model"] == "smollm2-135m"
    finally:
        out = stop(process)
    assert "no provider keys configured" in out
    assert ledger(data_dir) == [("gpt-4o-mini", "ok", r.json()["usage"]["completion_tokens"])]
