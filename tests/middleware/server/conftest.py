"""Fixtures: the real proxy (uvicorn on 127.0.0.1, a random port, in a thread) over a real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.middleware.conftest import make_settings
from thrifty.middleware.server import create_app
from thrifty.testing import CannedUpstream, ServerThread


class Proxy:
    """A running proxy: ``url`` (its root), ``openai_url`` (``/v1``), its ``app`` and ``engine``."""

    def __init__(self, app: Any, server: ServerThread) -> None:
        self.app = app
        self.engine = app.engine
        self.server = server
        self.url = server.url
        self.openai_url = server.url + "/v1"

    def rows(self) -> list[dict]:
        from tests.middleware.conftest import _ledger_rows

        return _ledger_rows(self.engine)


def start_proxy(settings: Any) -> Iterator[Proxy]:
    app = create_app(settings)
    with ServerThread(app) as server:
        yield Proxy(app, server)


@pytest.fixture
def proxy(tmp_path: Path, upstream: CannedUpstream) -> Iterator[Proxy]:
    """A proxy whose providers are the canned upstream (``openai/...``, ``anthropic/...``, ``canned/...``)."""
    yield from start_proxy(make_settings(tmp_path / "data", upstream))


@pytest.fixture(scope="session")
def local_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """A proxy as on a fresh machine: no provider keys, the embedded local model the default."""
    from thrifty import Settings

    yield from start_proxy(Settings.load(data_dir=tmp_path_factory.mktemp("local-proxy")))
