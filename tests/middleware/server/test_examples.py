"""The README's proxy examples (examples/proxy/), run as they are against a running proxy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.middleware.conftest import make_settings
from tests.middleware.server.conftest import start_proxy
from thrifty.testing import REPLY

EXAMPLES = Path(__file__).parents[3] / "examples" / "proxy"


@pytest.fixture(scope="module")
def example_proxy(tmp_path_factory, upstream):
    """A proxy whose ``default`` is the canned upstream, so the examples run in a blink."""
    settings = make_settings(tmp_path_factory.mktemp("examples"), upstream,
                             aliases={"default": {"model": "canned/gpt-canned"}})
    yield from start_proxy(settings)


def run(example: str, url: str) -> str:
    command = ["sh", str(EXAMPLES / example)] if example.endswith(".sh") else [sys.executable, str(EXAMPLES / example)]
    env = {**os.environ, "THRIFTY_URL": url}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("example", ["openai_sdk.py", "anthropic_sdk.py", "langchain_chat.py", "curl.sh"])
def test_example_runs(example_proxy, example):
    if example.endswith(".sh") and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    before = len(example_proxy.rows())
    out = run(example, example_proxy.url)
    assert REPLY.split()[0] in out
    rows = example_proxy.rows()[before:]
    assert rows and all(row["status"] == "ok" and row["model_requested"] == "default" for row in rows)
    if example == "openai_sdk.py":
        assert "cost USD:" in out and "'request_id'" in out
    if example == "curl.sh":
        assert "x-thrifty-cost-usd" in out and '"input_tokens"' in out and '"object": "list"' in out


@pytest.mark.model
def test_openai_example_on_the_embedded_model(local_proxy):
    out = run("openai_sdk.py", local_proxy.url)
    assert "cost USD: 0" in out and "usage:" in out
