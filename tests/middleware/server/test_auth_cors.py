"""Virtual keys at the proxy's door, and CORS."""

from __future__ import annotations

import hashlib

import anthropic
import httpx2
import openai
import pytest

from tests.middleware.conftest import make_settings
from tests.middleware.server.conftest import start_proxy

MSG = [{"role": "user", "content": "hello"}]
SECRET = "tk-test-secret-for-team-a"


@pytest.fixture
def keyed_proxy(tmp_path, upstream):
    settings = make_settings(tmp_path / "data", upstream, keys=[
        {"name": "team-a", "key": SECRET, "models": ["openai/*"], "rpm": 3}])
    yield from start_proxy(settings)


def test_a_key_is_required_once_one_exists(keyed_proxy):
    for key in ("", "tk-wrong"):
        client = openai.OpenAI(base_url=keyed_proxy.openai_url, api_key=key or "unused", max_retries=0)
        headers = {"authorization": ""} if not key else {}
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, extra_headers=headers)
        assert info.value.status_code == 401 and info.value.body["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=keyed_proxy.url, api_key="tk-wrong", max_retries=0).messages.create(
            model="openai/gpt-4o-mini", max_tokens=5, messages=MSG)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "authentication_error"
    r = httpx2.get(keyed_proxy.openai_url + "/models")
    assert r.status_code == 401
    assert httpx2.get(keyed_proxy.url + "/healthz").status_code == 200


def test_the_key_is_accepted_in_either_header_and_recorded_by_hash(keyed_proxy):
    r = openai.OpenAI(base_url=keyed_proxy.openai_url, api_key=SECRET, max_retries=0).chat.completions.create(
        model="openai/gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content
    m = anthropic.Anthropic(base_url=keyed_proxy.url, api_key=SECRET, max_retries=0).messages.create(
        model="openai/gpt-4o-mini", max_tokens=5, messages=MSG)
    assert m.content
    rows = keyed_proxy.rows()
    key_id = hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    assert [row["key_id"] for row in rows] == [key_id, key_id]
    assert httpx2.get(keyed_proxy.openai_url + "/models", headers={"x-api-key": SECRET}).status_code == 200


def test_model_allow_list_and_rate_limit_answer_in_the_callers_shape(keyed_proxy):
    client = anthropic.Anthropic(base_url=keyed_proxy.url, api_key=SECRET, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="anthropic/claude-haiku-4-5", max_tokens=5, messages=MSG)
    oa = openai.OpenAI(base_url=keyed_proxy.openai_url, api_key=SECRET, max_retries=0)
    for _ in range(3):  # rpm = 3
        oa.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    with pytest.raises(openai.RateLimitError) as info:
        oa.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert info.value.response.headers.get("retry-after") and info.value.body["type"] == "rate_limit_error"
    statuses = [row["status"] for row in keyed_proxy.rows()]
    assert statuses.count("error") >= 2  # the refused calls have their rows too


def test_cors_only_for_configured_origins(tmp_path, upstream):
    settings = make_settings(tmp_path / "data", upstream, server={"cors_origins": ["https://app.example"]})
    for proxy in start_proxy(settings):
        preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        ok = httpx2.options(proxy.openai_url + "/chat/completions", headers={"origin": "https://app.example", **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-credentials" not in ok.headers
        bad = httpx2.options(proxy.openai_url + "/chat/completions", headers={"origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in bad.headers
        r = httpx2.post(proxy.openai_url + "/chat/completions", headers={"origin": "https://app.example"},
                        json={"model": "openai/gpt-4o-mini", "messages": MSG})
        assert r.status_code == 200 and "x-thrifty-cost-usd" in r.headers["access-control-expose-headers"]


def test_metrics_behind_the_admin_key_when_one_is_set(tmp_path, upstream):
    settings = make_settings(tmp_path / "data", upstream, server={"admin_key": "adm-secret"})
    for proxy in start_proxy(settings):
        assert httpx2.get(proxy.url + "/metrics").status_code == 401
        assert httpx2.get(proxy.url + "/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        r = httpx2.get(proxy.url + "/metrics", headers={"authorization": "Bearer adm-secret"})
        assert r.status_code == 200 and "thrifty_requests" in r.text
        assert httpx2.get(proxy.url + "/healthz").status_code == 200
