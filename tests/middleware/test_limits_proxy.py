"""The budget race through the real proxy: 200 concurrent requests from the openai SDK, over HTTP.

The same helpers as the stage-level race (``limits_support.py``); the proxy
is the real server on loopback (``tests/middleware/server/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.middleware.limits_support import LimitsEnv, check_budget_held, race
from thrifty.middleware.limits import KeyStore
from thrifty.testing import CannedUpstream
from thrifty.types import Message, Request, TextPart

openai = pytest.importorskip("openai")
server = pytest.importorskip("tests.middleware.server.conftest")

PROMPT = "Say hello to the budget test"


@pytest.fixture
def proxy(limits_env: LimitsEnv, upstream: CannedUpstream) -> Iterator[Any]:
    yield from server.start_proxy(limits_env.settings(upstream))


async def test_200_concurrent_requests_through_the_proxy_never_overspend(
    limits_env: LimitsEnv, proxy: Any
) -> None:
    [stage] = [s for s in proxy.engine.pipeline.stages if s.kind == "limits"]
    target = proxy.engine.resolve("openai/gpt-4o-mini")
    request = Request(model=target.model, messages=[Message(role="user", content=[TextPart(PROMPT)])], max_tokens=5)
    reservation = stage.worst_case_usd(request, target)
    budget = reservation * 50
    store = KeyStore.open(limits_env.db_url)
    try:
        key, secret = store.create("race", budget_usd=budget)
    finally:
        store.close()
    client = openai.AsyncOpenAI(base_url=proxy.openai_url, api_key=secret, max_retries=0)

    async def call() -> None:
        await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=5
        )

    try:
        result = await race([call] * 200, watch=lambda: stage.budgets.status(key))
        assert stage.flush(10)
        final = stage.budgets.status(key)
        check_budget_held(result, budget, reservation, final)
        assert 49 <= result.ok and final.calls == result.ok
        rows = [r for r in proxy.rows() if r["key_id"] == key.key_id]
        assert len(rows) == 200 and sum(r["http_status"] == 429 for r in rows) == result.limited
    finally:
        await client.close()
        if limits_env.redis_url:
            import redis

            r = redis.Redis.from_url(limits_env.redis_url)  # the proxy's own namespace: clean this key up
            for name in r.scan_iter(f"thrifty:vk:{{{key.key_id}}}:*"):
                r.delete(name)
            r.close()
