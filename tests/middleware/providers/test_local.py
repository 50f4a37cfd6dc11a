"""The local provider against the real embedded model (SmolLM2-135M-Instruct).

The model's converted copy lives in one directory shared by every run
(``$THRIFTY_TEST_MODEL_CACHE`` or ``/tmp/thrifty-test-models``), so the
conversion (tens of seconds) happens once per machine; one test converts again
into a temporary directory to check the conversion itself. Outputs are kept
short (a few tokens; the model decodes ~16-20 tokens/s on these CPUs).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from thrifty.errors import InvalidRequestError, LocalModelError, UnknownModelError, UpstreamTimeoutError
from thrifty.middleware.context import CallContext
from thrifty.middleware.providers.base import build_provider
from thrifty.middleware.providers.local import (
    CATALOGUE,
    DecodeHook,
    LocalModelInfo,
    LocalProvider,
    _convert,
    _models,
)
from thrifty.middleware.providers.local._catalogue import (
    EmbeddedModel,
    ModelSource,
    resolve_model,
    sha256_file,
)
from thrifty.middleware.providers.local._deps import INSTALL_HINT, _require
from thrifty.middleware.providers.local._models import LoadedModel, ModelStore, model_store
from thrifty.middleware.providers.local._prompt import render_prompt
from thrifty.middleware.providers.local._text import IncrementalDetokenizer, StopFilter
from thrifty.settings import LocalModelSettings, ProviderConfig, Settings
from thrifty.types import (
    AsyncEventStream,
    ChoiceEnd,
    EventStream,
    Message,
    Request,
    Response,
    StreamError,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    UsageEvent,
)

MODEL = "smollm2-135m"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QUESTION = "What is the capital of France?"
STORY = "Write a long story about a cat who sails the sea."


def ask(text: str = QUESTION, **kw) -> Request:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("model", MODEL)
    return Request(messages=[Message("user", [TextPart(text)])], **kw)


def new_ctx() -> CallContext:
    return CallContext(entry="wrapper", wire="openai")


def text_of(response: Response, index: int = 0) -> str:
    return response.choices[index].message.text()


def stream_text(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return Path(os.environ.get("THRIFTY_TEST_MODEL_CACHE", "/tmp/thrifty-test-models"))


@pytest.fixture(scope="session")
def local_settings(model_cache_dir: Path) -> LocalModelSettings:
    return LocalModelSettings(cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def provider(local_settings: LocalModelSettings) -> LocalProvider:
    provider = LocalProvider(settings=local_settings)
    provider.load(MODEL)
    return provider


@pytest.fixture(scope="session")
def loaded(provider: LocalProvider) -> LoadedModel:
    return model_store().get(resolve_model(MODEL), provider.settings)


@pytest.fixture(scope="session")
def greedy(provider: LocalProvider) -> Response:
    """The greedy answer to QUESTION, computed once."""
    return provider.send(ask(temperature=0, max_tokens=16), new_ctx())


# ---------------------------------------------------------------- no model needed


def test_import_is_light():
    code = (
        "import sys, thrifty.middleware.providers.local as m; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_as_the_local_kind(local_settings):
    settings = Settings(local=local_settings)
    built = build_provider("mine", ProviderConfig(kind="local"), settings)
    assert isinstance(built, LocalProvider)
    assert (built.name, built.kind, built.is_local, built.wire) == ("mine", "local", True, None)
    assert built.settings == local_settings


def test_unknown_model_names_the_embedded_ones():
    with pytest.raises(UnknownModelError, match="local/smollm2-135m"):
        LocalProvider().send(Request(model="gpt-9", messages=[]), new_ctx())


def test_missing_path_is_unknown_model(tmp_path):
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_gguf_path_resolves_to_that_file(tmp_path):
    gguf = tmp_path / "tiny model.gguf"
    gguf.write_bytes(b"GGUF")
    source = resolve_model(str(gguf))
    assert (source.format, source.path, source.name) == ("gguf", gguf, str(gguf))
    assert source.cache_name.startswith("tiny_model-")
    gguf.write_bytes(b"GGUF changed")  # a changed file gets a new converted copy
    assert resolve_model(str(gguf)).cache_name != source.cache_name


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(LocalModelError, match="config.json"):
        resolve_model(str(tmp_path))


def test_missing_package_gives_install_hint():
    entry = EmbeddedModel("ghost", "", "ghost-model-pkg", "thrifty_no_such_package", "m.gguf", "0" * 64)
    with pytest.raises(LocalModelError, match=r"pip install 'thrifty\[local\]'"):
        entry.locate()


def test_missing_dependency_gives_install_hint():
    with pytest.raises(LocalModelError) as info:
        _require("thrifty_no_such_module")
    assert INSTALL_HINT in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_embedded_model_is_found_by_package_and_pinned():
    path = CATALOGUE[MODEL].locate()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256_file(path) == SMOLLM2_SHA256 == CATALOGUE[MODEL].sha256


def test_hash_mismatch_is_refused_before_conversion(tmp_path):
    real = resolve_model(MODEL)
    forged = ModelSource(MODEL, "gguf", real.path, "f" * 64, "forged-ffffffffffff")
    with pytest.raises(LocalModelError, match="SHA-256"):
        ModelStore().get(forged, LocalModelSettings(cache_dir=tmp_path))
    assert not (tmp_path / "forged-ffffffffffff").exists()


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    class Broken:
        def save_pretrained(self, directory, **kw):
            (Path(directory) / "model.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    monkeypatch.setattr(_convert, "_load_gguf", lambda source: (Broken(), None))
    monkeypatch.setattr(_convert, "require_gguf", lambda: None)
    source = ModelSource("x", "gguf", tmp_path / "x.gguf", None, "x-000")
    with pytest.raises(LocalModelError, match="disk full") as info:
        _convert.convert_gguf(source, tmp_path / "cache" / "x-000", sha256=None)
    assert isinstance(info.value.__cause__, OSError)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the target nor a temporary


def test_stop_filter_holds_back_possible_starts():
    stops = StopFilter(["END", "\n\n"])
    assert stops.push("abc E") == ("abc ", None)  # "E" could start END
    assert stops.push("N") == ("", None)
    assert stops.push("Dx") == ("", "END")
    plain = StopFilter(["END"])
    assert plain.push("EN") == ("", None)
    assert plain.push("ough") == ("ENough", None)
    assert plain.push("E") == ("", None)
    assert plain.flush() == "E"
    assert StopFilter(["ab"]).push("xxabyyab") == ("xx", "ab")


# ---------------------------------------------------------------- loading


@pytest.mark.model
def test_concurrent_first_calls_load_once(local_settings, provider, monkeypatch):
    calls = []
    real_load = _models._load

    def counting_load(*args):
        calls.append(threading.current_thread().name)
        time.sleep(0.2)  # widen the window in which the other threads arrive
        return real_load(*args)

    monkeypatch.setattr(_models, "_load", counting_load)
    store = ModelStore()
    source = resolve_model(MODEL)
    results: list[LoadedModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.get(source, local_settings))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert results[0].convert_seconds is None  # the session's converted copy was reused


@pytest.mark.model
@pytest.mark.slow
def test_conversion_writes_a_complete_cache_once(tmp_path):
    settings = LocalModelSettings(cache_dir=tmp_path, dtype="bfloat16")
    first = ModelStore().get(resolve_model(MODEL), settings)
    assert first.convert_seconds is not None and first.dtype == "bfloat16"
    entries = list(tmp_path.iterdir())
    assert [e.name for e in entries] == [f"{MODEL}-{SMOLLM2_SHA256[:12]}"]
    files = {p.name for p in entries[0].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", _convert.MARKER} <= files
    second = ModelStore().get(resolve_model(MODEL), settings)
    assert second.convert_seconds is None
    assert second.load_seconds < first.load_seconds / 3
    ids = second.tokenizer.encode(QUESTION)
    assert ids == first.tokenizer.encode(QUESTION)


@pytest.mark.model
def test_dtype_is_measured_or_set(loaded, local_settings):
    assert loaded.dtype in ("float32", "bfloat16")
    if local_settings.dtype == "auto" and loaded.probe is not None:
        assert set(loaded.probe) == {"float32", "bfloat16"}
        faster = max(loaded.probe, key=loaded.probe.__getitem__)
        assert loaded.dtype == faster or loaded.dtype == "float32"
    assert str(next(loaded.model.parameters()).dtype) == f"torch.{loaded.dtype}"


@pytest.mark.model
def test_model_info(loaded, provider):
    info = provider.load(MODEL)
    assert isinstance(info, LocalModelInfo)
    assert (info.name, info.vocab_size, info.context_length) == (MODEL, 49152, 8192)
    assert loaded.tokenizer.convert_tokens_to_ids("<|im_end|>") in info.eos_token_ids


@pytest.mark.model
def test_a_model_directory_path_loads(loaded, model_cache_dir):
    directory = model_cache_dir / resolve_model(MODEL).cache_name
    provider = LocalProvider(settings=LocalModelSettings(cache_dir=model_cache_dir, dtype="float32"))
    response = provider.send(ask(temperature=0, max_tokens=4, model=str(directory)), new_ctx())
    assert response.model == str(directory)
    assert response.usage.output_tokens >= 1 and text_of(response)


# ---------------------------------------------------------------- decoding


@pytest.mark.model
def test_greedy_answer_is_deterministic(provider, greedy):
    assert "Paris" in text_of(greedy)
    assert greedy.choices[0].finish_reason == "stop"
    again = provider.send(ask(temperature=0, max_tokens=16), new_ctx())
    assert text_of(again) == text_of(greedy)
    assert greedy.id.startswith("local-") and greedy.model == MODEL
    assert abs(greedy.created - time.time()) < 120


@pytest.mark.model
def test_seed_reproduces_sampling(provider):
    req = ask(STORY, temperature=1.0, max_tokens=8)
    first = provider.send(req.replace(seed=11), new_ctx())
    assert text_of(provider.send(req.replace(seed=11), new_ctx())) == text_of(first)
    others = {text_of(provider.send(req.replace(seed=s), new_ctx())) for s in (12, 13)}
    assert others - {text_of(first)}  # other seeds give other samples


@pytest.mark.model
def test_max_tokens_ends_with_length(provider):
    response = provider.send(ask(STORY, temperature=0, max_tokens=3), new_ctx())
    assert response.choices[0].finish_reason == "length"
    assert response.usage.output_tokens == 3


@pytest.mark.model
def test_stop_sequence_cuts_the_text(provider, greedy):
    full = text_of(greedy)
    stop = full[full.index("Paris") : full.index("Paris") + 3]  # "Par"
    response = provider.send(ask(temperature=0, max_tokens=16, stop=["zzz", stop]), new_ctx())
    choice = response.choices[0]
    assert text_of(response) == full[: full.index(stop)]
    assert (choice.finish_reason, choice.stop_sequence) == ("stop", stop)
    events = list(provider.send(ask(temperature=0, max_tokens=16, stop=[stop], stream=True), new_ctx()))
    assert stream_text(events) == text_of(response)
    assert not any("P" in e.text for e in events if isinstance(e, TextDelta))  # held back, then cut
    end = next(e for e in events if isinstance(e, ChoiceEnd))
    assert (end.finish_reason, end.stop_sequence) == ("stop", stop)


@pytest.mark.model
def test_n_gives_independent_choices(provider):
    response = provider.send(ask(STORY, temperature=1.0, seed=3, n=2, max_tokens=5), new_ctx())
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in response.choices)
    assert text_of(response, 0) != text_of(response, 1)
    assert response.usage.output_tokens == 10  # every choice's tokens
    prompt = provider.estimate_prompt_tokens(ask(STORY))
    assert response.usage.input_tokens == prompt  # the prompt once


@pytest.mark.model
def test_logprobs(provider, loaded):
    response = provider.send(
        ask(STORY, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3), new_ctx()
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and len(logprobs) == response.usage.output_tokens == 6
    assert bytes(b for lp in logprobs for b in lp.bytes).decode() == text_of(response)
    for lp in logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.logprob == pytest.approx(lp.top[0][1])  # greedy picks a top token (bf16 logits tie)
    plain = provider.send(ask(STORY, temperature=0, max_tokens=2), new_ctx())
    assert plain.choices[0].logprobs is None


@pytest.mark.model
def test_usage_matches_the_tokenizer(provider, loaded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    expected = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected_ids = loaded.tokenizer.encode(expected, add_special_tokens=False)
    req = Request(
        model=MODEL,
        messages=[Message("system", [TextPart("Be brief.")]), Message("user", [TextPart(QUESTION)])],
        max_tokens=4,
        temperature=0,
        logprobs=True,
    )
    assert provider.estimate_prompt_tokens(req) == len(expected_ids)
    response = provider.send(req, new_ctx())
    assert response.usage.input_tokens == len(expected_ids)
    assert response.usage.output_tokens == len(response.choices[0].logprobs) == 4
    assert response.usage.source == "provider"


@pytest.mark.model
def test_context_overflow_is_an_invalid_request(provider):
    with pytest.raises(InvalidRequestError, match=r"8192-token context window") as info:
        provider.send(ask(max_tokens=9000), new_ctx())
    assert "9000" in info.value.message and info.value.param == "max_tokens"
    long_prompt = "lorem ipsum " * 5000
    with pytest.raises(InvalidRequestError, match="context window of 8192"):
        provider.send(ask(long_prompt, max_tokens=None), new_ctx())


@pytest.mark.model
def test_tools_need_a_template_that_takes_them(provider):
    req = ask(tools=[Tool(name="get_weather", parameters={"type": "object", "properties": {}})])
    with pytest.raises(InvalidRequestError, match="does not support tools"):
        provider.send(req, new_ctx())


@pytest.mark.model
def test_tool_history_renders_as_text(loaded):
    req = Request(
        model=MODEL,
        messages=[
            Message("user", [TextPart("Weather in Paris?")]),
            Message("assistant", [ToolCallPart(id="c1", name="get_weather", arguments='{"city": "Paris"}')]),
            Message("tool", [ToolResultPart(tool_call_id="c1", content=[TextPart("18 C, sunny")])]),
        ],
    )
    prompt = loaded.tokenizer.decode(render_prompt(loaded.tokenizer, req, MODEL))
    assert "get_weather" in prompt and '{"city": "Paris"}' in prompt
    assert "Result of tool call c1:\n18 C, sunny" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.model
def test_detokenizer_never_splits_a_character(loaded):
    tokenizer = loaded.tokenizer
    text = "naïve café → 東京 🐈‍⬛ done"
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


# ---------------------------------------------------------------- streaming


@pytest.mark.model
def test_stream_equals_plain_response(provider):
    req = ask(STORY, temperature=0.9, seed=5, max_tokens=10, logprobs=True)
    plain = provider.send(req, new_ctx())
    stream = provider.send(req.replace(stream=True), new_ctx())
    assert isinstance(stream, EventStream)
    events = list(stream)
    assert isinstance(events[0], StreamStart) and events[0].model == MODEL
    assert isinstance(events[-2], ChoiceEnd) and isinstance(events[-1], UsageEvent)
    assert stream_text(events) == text_of(plain)
    assert events[-1].usage == plain.usage
    streamed_lps = [lp for e in events if isinstance(e, TextDelta) for lp in e.logprobs or []]
    assert streamed_lps == plain.choices[0].logprobs
    assert events[-2].finish_reason == plain.choices[0].finish_reason


@pytest.mark.model
def test_closing_a_stream_stops_generation(provider, loaded):
    stream = provider.send(ask(STORY, max_tokens=500, stream=True), new_ctx())
    events = iter(stream)
    assert isinstance(next(events), StreamStart)
    assert isinstance(next(events), UsageEvent)  # the prompt's count comes first
    assert isinstance(next(events), TextDelta)
    assert loaded.lock.locked()
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 1.0  # the generator is parked at a yield: no step to finish
    assert not loaded.lock.locked()
    assert provider.send(ask(max_tokens=2), new_ctx()).usage.output_tokens == 2


@pytest.mark.model
def test_deadline_ends_generation(provider, loaded):
    ctx = new_ctx()
    ctx.deadline = time.monotonic() - 1
    with pytest.raises(UpstreamTimeoutError):
        provider.send(ask(max_tokens=2), ctx)
    ctx.deadline = time.monotonic() + 1.0
    events = list(provider.send(ask(STORY, max_tokens=500, stream=True), ctx))
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, UpstreamTimeoutError)
    usage = [e for e in events if isinstance(e, UsageEvent)][-1].usage  # what was spent is reported
    assert usage.output_tokens < 500
    assert not loaded.lock.locked()


# ---------------------------------------------------------------- async


@pytest.mark.model
async def test_async_send_keeps_the_loop_free(provider):
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    response = await provider.asend(ask(STORY, temperature=0, max_tokens=16), new_ctx())
    elapsed = time.perf_counter() - started
    done.set()
    await task
    assert response.usage.output_tokens == 16
    # a blocked loop would tick once or twice; a free one ~every 10 ms (less on a busy machine)
    assert ticks >= max(5, elapsed / 0.01 * 0.2)


@pytest.mark.model
async def test_async_stream(provider, greedy):
    stream = await provider.asend(ask(temperature=0, max_tokens=16, stream=True), new_ctx())
    assert isinstance(stream, AsyncEventStream)
    events = [e async for e in stream]
    assert isinstance(events[0], StreamStart) and isinstance(events[-1], UsageEvent)
    assert stream_text(events) == text_of(greedy)
    assert events[-1].usage == greedy.usage


@pytest.mark.model
async def test_closing_an_async_stream_stops_generation(provider, loaded):
    stream = await provider.asend(ask(STORY, max_tokens=500, stream=True), new_ctx())
    events = stream.__aiter__()
    assert isinstance(await events.__anext__(), StreamStart)
    assert isinstance(await events.__anext__(), UsageEvent)
    assert isinstance(await events.__anext__(), TextDelta)
    started = time.perf_counter()
    await events.aclose()
    assert time.perf_counter() - started < 5.0  # at most the decode step under way (~60 ms when idle)
    assert not loaded.lock.locked()


@pytest.mark.model
async def test_cancelling_an_async_call_stops_generation(provider, loaded):
    task = asyncio.create_task(provider.asend(ask(STORY, max_tokens=500), new_ctx()))
    while not loaded.lock.locked():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.perf_counter() + 5.0
    while loaded.lock.locked() and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    assert not loaded.lock.locked()


# ---------------------------------------------------------------- decode hooks


class BanTokens:
    """Masks the given token ids at every step."""

    def __init__(self, banned: set[int]) -> None:
        self.banned = sorted(banned)

    def process(self, token_ids, logits):
        logits[self.banned] = float("-inf")

    def accept(self, token_id):
        pass

    def is_finished(self):
        return False


class DigitsThenStop:
    """Allows digit tokens only, and ends the sequence after ``limit`` tokens."""

    made: ClassVar[list[LocalModelInfo]] = []

    def __init__(self, info: LocalModelInfo, limit: int = 3) -> None:
        import torch

        DigitsThenStop.made.append(info)
        vocab = info.tokenizer.convert_ids_to_tokens(list(range(info.vocab_size)))
        self.allowed = torch.tensor([bool(t) and t.isdigit() for t in vocab])
        self.seen: list[int] = []
        self.limit = limit

    def process(self, token_ids, logits):
        assert token_ids == self.seen  # the provider hands over this sequence's tokens
        return logits.masked_fill(~self.allowed, float("-inf"))  # a new tensor is fine too

    def accept(self, token_id):
        self.seen.append(token_id)

    def is_finished(self):
        return len(self.seen) >= self.limit


@pytest.mark.model
def test_hook_that_bans_a_token_changes_the_output(provider, greedy, loaded):
    first_token = loaded.tokenizer.encode(text_of(greedy), add_special_tokens=False)[0]
    ctx = new_ctx()
    ctx.decode_hooks.append(lambda info: BanTokens({first_token}))
    response = provider.send(ask(temperature=0, max_tokens=4, top_logprobs=1), ctx)
    lps = response.choices[0].logprobs
    assert lps[0].token != loaded.tokenizer.decode([first_token])
    assert lps[0].top[0][0] == loaded.tokenizer.decode([first_token])  # logprobs stay the model's own


@pytest.mark.model
def test_hook_forces_digits_and_ends_the_sequence(provider):
    DigitsThenStop.made.clear()
    ctx = new_ctx()
    ctx.decode_hooks.append(DigitsThenStop)
    response = provider.send(ask("How old is the sun?", temperature=0.7, seed=1, n=2, max_tokens=10), ctx)
    assert len(DigitsThenStop.made) == 2  # one hook per sequence
    assert DigitsThenStop.made[0].name == MODEL
    for choice in response.choices:
        assert choice.message.text().isdigit()
        assert choice.finish_reason == "stop"
    assert response.usage.output_tokens == 6
    assert isinstance(DigitsThenStop(DigitsThenStop.made[0]), DecodeHook)


@pytest.mark.model
def test_hook_that_masks_everything_is_a_local_model_error(provider):
    ctx = new_ctx()
    ctx.decode_hooks.append(lambda info: BanTokens(set(range(info.vocab_size))))
    with pytest.raises(LocalModelError, match="no token possible"):
        provider.send(ask(max_tokens=2), ctx)


@pytest.mark.model
def test_concurrent_calls_queue_on_the_model_lock(provider, greedy):
    results: list[str] = []

    def call():
        results.append(text_of(provider.send(ask(temperature=0, max_tokens=16), new_ctx())))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [text_of(greedy)] * 2
