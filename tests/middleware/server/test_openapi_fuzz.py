"""Fuzz the running proxy against its own OpenAPI document (schemathesis): never a 5xx, and answers as
documented (status codes, content types, bodies, headers). Valid and invalid requests; bounded examples.

Every model name without a provider prefix goes to the canned upstream here, so valid requests are answered
quickly; ``THRIFTY_FUZZ_EXAMPLES`` raises the number of examples per operation (default 30).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.middleware.conftest import make_settings
from tests.middleware.server.conftest import start_proxy

EXAMPLES = int(os.environ.get("THRIFTY_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory, upstream):
    yield from start_proxy(make_settings(tmp_path_factory.mktemp("fuzz"), upstream, default_provider="canned"))


def _checks() -> list:
    from schemathesis import checks

    checks.load_all_checks()
    names = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
             "response_schema_conformance", "response_headers_conformance")
    return [checks.CHECKS.get_one(name) for name in names]


def _operations(url: str) -> list:
    loaded = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


# schemathesis' pytest plugin does not run on this pytest; its strategies, driven by hypothesis, do
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors_and_documented_answers(fuzz_proxy, mode):
    checks = _checks()
    operations = _operations(fuzz_proxy.url)
    labels = {operation.label for operation in operations}
    assert {"POST /v1/chat/completions", "POST /v1/messages", "POST /v1/messages/count_tokens",
            "GET /v1/models"} <= labels
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # nothing to get wrong: these take no parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(base_url=fuzz_proxy.url, checks=checks, timeout=30)

        fuzz()
