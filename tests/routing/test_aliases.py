"""Model aliases and the router registry, through a real Engine, the loopback upstream and the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa

import thrifty
from thrifty import CallContext, ConfigurationError, Engine, Settings, UnknownModelError
from thrifty.middleware.context import ThriftyOptions
from thrifty.middleware.engine import ModelResolver
from thrifty.routing import AliasRouter, Route, Router, register_router, router_names
from thrifty.routing import base as routing_base
from thrifty.settings import AliasConfig, RetrySettings
from thrifty.testing import REPLY, CannedUpstream
from thrifty.types import Message, Request, Response, TextPart


@pytest.fixture
def make_engine(data_dir: Path, upstream: CannedUpstream) -> Iterator[Any]:
    engines: list[Engine] = []

    def make(aliases: dict[str, Any] | None = None, **overrides: Any) -> Engine:
        providers = {"canned": {"kind": "openai-compatible", "base_url": upstream.url},
                     **overrides.pop("providers", {})}
        settings = Settings.load(data_dir=data_dir / f"engine-{len(engines)}", providers=providers,
                                 aliases=aliases or {}, **overrides)
        engine = Engine(settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def rows(engine: Engine) -> list[dict[str, Any]]:
    assert engine.recorder.flush(timeout=10)
    db = sa.create_engine(engine.settings.ledger_url)
    try:
        with db.connect() as conn:
            result = conn.execute(sa.text("SELECT * FROM llm_calls ORDER BY started_at, attempt"))
            return [dict(r) for r in result.mappings()]
    finally:
        db.dispose()


def request(model: str) -> Request:
    return Request(model=model, messages=[Message("user", [TextPart("say hello")])])


def ctx(**kw: Any) -> CallContext:
    return CallContext(entry="proxy", wire="openai", **kw)


def routed(engine: Engine, model: str, **kw: Any) -> tuple[Request, CallContext]:
    """The routing step alone: what the request and its context look like after it."""
    call = ctx(**kw)
    (resolver,) = [stage for stage in engine.pipeline.stages if isinstance(stage, ModelResolver)]
    return resolver.prepare(request(model), call), call


# ---------------------------------------------------------------- aliases


def test_an_alias_goes_to_its_model_and_the_ledger_says_so(make_engine, upstream):
    engine = make_engine({"fast": {"model": "canned/gpt-fast"}, "smart": {"model": "canned/gpt-smart"}})
    call = ctx()
    answer = engine.handle(request("fast"), call)
    assert isinstance(answer, Response) and answer.choices[0].message.text() == REPLY
    assert upstream.requests[-1]["body"]["model"] == "gpt-fast"
    assert call.model_requested == "fast" and call.route_decision == "alias:fast"
    (row,) = rows(engine)
    assert (row["model_requested"], row["model_used"], row["provider"], row["route_decision"]) == (
        "fast", "gpt-fast", "canned", "alias:fast")


def test_an_alias_gives_its_calls_options_and_a_calls_own_win(make_engine):
    engine = make_engine({"team": {"model": "canned/gpt-team", "options": {"project": "alpha", "tags": ["t1"]}}})
    assert engine.options_for("team", ThriftyOptions()) == ThriftyOptions(project="alpha", tags=["t1"])
    own = engine.options_for("team", ThriftyOptions(project="beta"))
    assert (own.project, own.tags) == ("beta", ["t1"])
    assert engine.options_for("canned/gpt-team", ThriftyOptions(user="u")) == ThriftyOptions(user="u")
    engine.handle(request("team"), ctx())
    engine.handle(request("team"), ctx(options=ThriftyOptions(project="beta")))
    assert [row["project"] for row in rows(engine)] == ["alpha", "beta"]


def test_bad_alias_options_name_the_alias(make_engine):
    with pytest.raises(ConfigurationError, match=r"\[aliases.team\] options: unknown thrifty option 'colour'"):
        make_engine({"team": {"model": "canned/gpt-team", "options": {"colour": "red"}}})


def test_other_names_are_not_routed(make_engine):
    engine = make_engine({"fast": {"model": "canned/gpt-fast"}})
    req, call = routed(engine, "canned/gpt-4o")
    assert req.model == "gpt-4o" and call.route_decision is None and call.fallbacks == ()
    assert call.model_requested == "canned/gpt-4o"


def test_default_without_config_is_the_local_default_model(tmp_path):
    engine = Engine(Settings.load(data_dir=tmp_path), ledger=False)
    try:
        req, call = routed(engine, "default")
        assert call.target is not None and call.target.provider.name == "local"
        assert req.model == call.target.model == "smollm2-135m"
        assert call.route_decision == "alias:default" and call.model_requested == "default"
    finally:
        engine.close()


@pytest.mark.model
def test_default_without_config_answers_from_the_embedded_model(make_engine):
    engine = make_engine()
    answer = engine.handle(Request(model="default", messages=[Message("user", [TextPart("Hi")])], max_tokens=4),
                           ctx())
    assert answer.choices[0].message.text()
    (row,) = rows(engine)
    assert (row["provider"], row["model_used"], row["model_requested"]) == ("local", "smollm2-135m", "default")


def test_default_follows_the_default_provider(make_engine, upstream):
    engine = make_engine(default_provider="canned",
                         providers={"canned": {"kind": "openai-compatible", "base_url": upstream.url,
                                               "default_model": "gpt-house"}})
    engine.handle(request("default"), ctx())
    assert upstream.requests[-1]["body"]["model"] == "gpt-house"
    assert rows(engine)[0]["route_decision"] == "alias:default"


def test_default_provider_without_a_default_model_says_what_to_configure(make_engine):
    engine = make_engine(default_provider="canned")
    with pytest.raises(UnknownModelError, match=r"aliases\.default.*providers\.canned\.default_model"):
        engine.handle(request("default"), ctx())
    (row,) = rows(engine)  # refused before any upstream, still a row
    assert row["http_status"] == 404 and row["model_requested"] == "default"


def test_a_configured_default_wins(make_engine, upstream):
    engine = make_engine({"default": {"model": "canned/gpt-mine"}})
    engine.handle(request("default"), ctx())
    assert upstream.requests[-1]["body"]["model"] == "gpt-mine"


def test_aliases_of_aliases_and_cycles(make_engine):
    engine = make_engine({"default": {"model": "fast"}, "fast": {"model": "canned/gpt-fast",
                                                                 "fallbacks": ["canned/gpt-b"]}})
    req, call = routed(engine, "default")
    assert req.model == "gpt-fast" and call.route_decision == "alias:default"
    assert call.fallbacks == ("canned/gpt-b",)  # inherited from the alias it names
    with pytest.raises(ConfigurationError, match="a -> b -> a"):
        make_engine({"a": {"model": "b"}, "b": {"model": "a"}})


def test_an_alias_of_a_name_to_itself_adds_fallbacks(make_engine):
    engine = make_engine({"canned/fail-500": {"model": "canned/fail-500", "fallbacks": ["canned/gpt-ok"]}})
    answer = engine.handle(request("canned/fail-500"), ctx())
    assert answer.model == "gpt-ok"
    assert [r["model_used"] for r in rows(engine)] == ["fail-500", "fail-500", "gpt-ok"]


def test_default_with_fallbacks_keeps_the_built_in_model(tmp_path):
    settings = Settings.load(data_dir=tmp_path, aliases={"default": {"model": "default",
                                                                     "fallbacks": ["openai/gpt-4o-mini"]}})
    engine = Engine(settings, ledger=False)
    try:
        req, call = routed(engine, "default")
        assert req.model == "smollm2-135m" and call.fallbacks == ("openai/gpt-4o-mini",)
    finally:
        engine.close()


def test_fallbacks_naming_an_alias_stand_for_its_model(make_engine):
    engine = make_engine({"smart": {"model": "canned/gpt-smart", "fallbacks": ["fast", "default"]},
                          "fast": {"model": "canned/gpt-fast"}})
    _, call = routed(engine, "smart")
    assert call.fallbacks == ("canned/gpt-fast", "local/smollm2-135m")


def test_alias_retry_fields_override_the_retry_table():
    base = RetrySettings(backoff_s=0.01, on_status=[500])
    aliases = {"x": AliasConfig.model_validate({"model": "m", "retry": {"max_attempts": 4}}),
               "y": AliasConfig(model="m")}
    router = AliasRouter(aliases, base, lambda: "local/smollm2-135m")
    route = router.route(request("x"), ctx())
    assert route is not None and route.retry is not None
    assert (route.retry.max_attempts, route.retry.backoff_s, route.retry.on_status) == (4, 0.01, [500])
    route = router.route(request("y"), ctx())
    assert route is not None and route.retry is None  # the engine's [retry] applies
    assert router.route(request("z"), ctx()) is None
    assert router.names == {"x", "y", "default"}


def test_aliases_from_a_config_file(tmp_path, upstream):
    config = tmp_path / "thrifty.toml"
    config.write_text(
        f'[providers.canned]\nkind = "openai-compatible"\nbase_url = "{upstream.url}"\n'
        '[aliases.smart]\nmodel = "canned/fail-503"\nfallbacks = ["canned/gpt-ok"]\n'
        '[aliases.smart.retry]\nmax_attempts = 3\nbackoff_s = 0\n')
    engine = Engine(Settings.load(config, data_dir=tmp_path / "data"))
    try:
        assert engine.handle(request("smart"), ctx()).model == "gpt-ok"
        assert [r["model_used"] for r in rows(engine)] == ["fail-503"] * 3 + ["gpt-ok"]
    finally:
        engine.close()


# ---------------------------------------------------------------- wrapped clients


def test_wrapped_client_bare_names_in_an_alias_go_to_its_own_api(make_engine, upstream):
    engine = make_engine({"fast": {"model": "gpt-own"}})
    client = thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url), engine=engine)
    r = client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert r.model == "gpt-own" and upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-user"
    (row,) = rows(engine)
    assert (row["entry"], row["provider"], row["model_requested"], row["route_decision"]) == (
        "wrapper", "openai", "fast", "alias:fast")


def test_default_in_a_wrapped_client_is_thriftys_default(make_engine, upstream):
    from thrifty.middleware.providers.openai import OpenAICompatibleProvider

    engine = make_engine()
    own = OpenAICompatibleProvider("openai", base_url=upstream.url)
    req, call = routed(engine, "default", bound_provider=own)
    assert call.target is not None and call.target.provider.name == "local" and req.model == "smollm2-135m"


# ---------------------------------------------------------------- the registry


class Cheapest(Router):
    name = "cheapest"

    def route(self, request: Request, ctx: CallContext) -> Route | None:
        if request.model != "cheap":
            return None
        return Route("canned/gpt-cheap", "cheapest", fallbacks=("canned/gpt-ok",))


def test_routers_are_registered_and_asked_in_order(make_engine, monkeypatch, upstream):
    monkeypatch.setattr(routing_base, "_ROUTERS", dict(routing_base._ROUTERS))
    assert router_names() == ["aliases"]
    register_router("cheapest", lambda engine: Cheapest())
    register_router("unused", lambda engine: None)  # not configured: not asked at all
    assert router_names() == ["aliases", "cheapest", "unused"]
    engine = make_engine({"cheap": {"model": "canned/gpt-alias"}, "fast": {"model": "canned/gpt-fast"}})
    assert [r.name for r in engine.routers] == ["aliases", "cheapest"]
    _, call = routed(engine, "cheap")
    assert call.route_decision == "alias:cheap"  # the alias router comes first
    engine = make_engine()
    req, call = routed(engine, "cheap")
    assert req.model == "gpt-cheap" and call.route_decision == "cheapest" and call.fallbacks == ("canned/gpt-ok",)
    engine.handle(request("cheap"), ctx())
    assert upstream.requests[-1]["body"]["model"] == "gpt-cheap"


def test_the_readme_alias_config_loads_and_routes(tmp_path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Model aliases, retries and fallbacks", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "thrifty.toml"
    config.write_text(block)
    engine = Engine(Settings.load(config, data_dir=tmp_path / "data"), ledger=False)
    try:
        req, call = routed(engine, "smart")
        assert call.target is not None and call.target.provider.name == "anthropic"
        assert req.model == "claude-sonnet-4-5" and call.route_decision == "alias:smart"
        assert call.fallbacks == ("openai/gpt-4o-mini", "local/smollm2-135m")
        assert call.retry is not None and call.retry.max_attempts == 3 and call.retry.max_backoff_s == 8.0
        req, call = routed(engine, "default")
        assert req.model == "smollm2-135m"
    finally:
        engine.close()
