"""The precisions the compressor's model runs in, and the fast modes' choice among them, measured once."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest
import torch

from tests.compressors.conftest import PASSAGE
from thrifty.compressors import _int8, model
from thrifty.compressors.lingua import Compressor
from thrifty.compressors.model import PRECISIONS, fast_candidates, fast_precision, load_model, native_bfloat16
from thrifty.errors import LocalModelError
from thrifty.middleware.providers.local import _models

pytestmark = pytest.mark.skipif(not _int8.int8_supported(), reason="this torch has no int8 matrix product")

REPORT = (
    "Quarterly revenue for the northern region rose to 4.2 million dollars, mostly because two large "
    "hospitals renewed their maintenance contracts early. The southern region fell short of its target: "
    "a delayed shipment of spare parts left three service teams idle for most of March, and the customer "
    "who was waiting for them moved part of the work to a competitor. For the next quarter the board asked "
    "for a plan to keep a reserve of the parts that fail most often, and for a review of the contracts that "
    "end before the summer, so that renewals are not left to the last week. "
)


@pytest.fixture
def probe_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "_cache_dir", None)  # whatever an engine built earlier in this process set
    monkeypatch.setenv("THRIFTY_LOCAL__CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("speeds", "expected"), [
    ({"float32": 100, "bfloat16": 160, "int8": 170}, "bfloat16"),  # int8 must beat bfloat16 by 10% too
    ({"float32": 100, "bfloat16": 60, "int8": 140}, "int8"),  # an emulated bfloat16 is passed over
    ({"float32": 100, "bfloat16": 105, "int8": 108}, "float32"),  # a few per cent is not worth the precision
    ({"float32": 100, "int8": 111}, "int8"),
    ({"float32": 100}, "float32"),
])
def test_a_less_precise_runtime_must_be_clearly_faster(speeds, expected):
    assert model._pick(speeds) == expected


def test_candidates_are_those_the_cpu_computes_natively(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(_models, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    assert fast_candidates() == ("float32",)  # AVX2 alone: int8 ran ten times slower, and is not timed
    monkeypatch.setattr(_models, "cpu_flags", lambda: frozenset({"avx2", "avx_vnni"}))
    assert fast_candidates() == ("float32", "int8")
    monkeypatch.setattr(_models, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert not native_bfloat16() and fast_candidates() == ("float32", "int8")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert fast_candidates() == PRECISIONS
    monkeypatch.setattr(_int8, "int8_supported", lambda: False)
    assert fast_candidates() == ("float32", "bfloat16")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch that cannot tell
    assert not native_bfloat16() and fast_candidates() == ("float32",)


def test_without_torch_the_only_candidate_is_float32(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # imports fail, as without torch
    monkeypatch.setitem(sys.modules, "thrifty.compressors._int8", None)
    assert fast_candidates() == ("float32",)


@pytest.fixture
def two_candidates(monkeypatch):
    """float32 and int8 to time, whatever this CPU computes natively (on AVX2 alone only float32 would be)."""
    monkeypatch.setattr(model, "fast_candidates", lambda: ("float32", "int8"))


def test_the_choice_is_measured_once_and_kept(weights, probe_dir, two_candidates, monkeypatch):
    chosen = fast_precision(weights)
    stored = json.loads((probe_dir / "dtype-probe.json").read_text())
    (key, speeds), = stored.items()
    assert set(speeds) == {"float32", "int8"} and all(v > 0 for v in speeds.values())
    assert chosen == model._pick(speeds)

    def no_timing(*args):
        raise AssertionError("timed again")

    monkeypatch.setattr(model, "_time_precisions", no_timing)
    stored[key] = {p: (1000.0 if p == "int8" else 10.0) for p in speeds}  # as if int8 were far faster here
    (probe_dir / "dtype-probe.json").write_text(json.dumps(stored))
    assert fast_precision(weights) == "int8"
    fast = Compressor.load("fast", str(weights))
    assert fast.precision == fast._m.precision in PRECISIONS


def test_a_pinned_precision_is_used_as_given_and_measures_nothing(weights, probe_dir, monkeypatch):
    from thrifty.compressors import load_compressor
    from thrifty.errors import InvalidRequestError

    def no_timing(*args):
        raise AssertionError("timed")

    monkeypatch.setattr(model, "_time_precisions", no_timing)
    for precision in PRECISIONS:
        for mode in ("fast", "turbo"):
            assert Compressor.load(mode, str(weights), precision=precision).precision == precision
    assert Compressor.load("exact", str(weights), precision="int8").precision == "float32"  # exact is exact
    pinned = load_compressor(mode="fast", model=str(weights), precision="int8")
    assert pinned.precision == "int8" and pinned is load_compressor(mode="fast", model=str(weights), precision="int8")
    assert not (probe_dir / "dtype-probe.json").exists()
    with pytest.raises(InvalidRequestError, match="auto, float32, bfloat16, int8") as bad:
        Compressor.load("fast", str(weights), precision="float16")
    assert bad.value.param == "precision"


def test_one_candidate_needs_no_measurement(weights, probe_dir, monkeypatch):
    monkeypatch.setattr(model, "fast_candidates", lambda: ("float32",))
    assert fast_precision(weights) == "float32"
    assert not (probe_dir / "dtype-probe.json").exists()


def test_an_unwritable_cache_costs_only_a_second_measurement(weights, tmp_path, two_candidates, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setattr(model, "_cache_dir", None)
    monkeypatch.setenv("THRIFTY_LOCAL__CACHE_DIR", str(blocked / "models"))  # below a file: cannot be made
    assert fast_precision(weights) in ("float32", "int8")


def test_int8_layers_follow_the_float_layers():
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 1536)
    x = torch.randn(3, 40, 384)
    x[0, 0] *= 50  # one token of outsized activations does not cost the others their resolution
    q = _int8.Int8Linear(linear)
    with torch.inference_mode():
        want, got = linear(x), q(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    error = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert float(error.max()) < 0.02


def test_the_int8_model_keeps_the_float32_models_decisions():
    exact = Compressor.load("exact")
    int8 = Compressor(load_model(None, precision="int8"), "fast")
    assert int8.precision == "int8"
    encoder = int8._m.model.base_model
    assert not any(isinstance(m, torch.nn.Linear) for m in encoder.modules())
    assert isinstance(int8._m.model.classifier, torch.nn.Linear)  # the head stays float32
    text = (REPORT + PASSAGE) * 6
    a, b = exact.keep_decisions(text, 0.5), int8.keep_decisions(text, 0.5)
    assert a.words == b.words
    assert np.mean(a.keep == b.keep) >= 0.98


def test_query_key_and_value_round_their_input_once(weights):
    shared = load_model(weights, precision="int8").model
    layer = shared.base_model.encoder.layer[0].attention.self
    assert layer.query._shared is layer.key._shared is layer.value._shared is not None
    assert shared.base_model.encoder.layer[0].output.dense._shared is None
    alone = _int8.quantise(copy.deepcopy(load_model(weights).model))
    for module in alone.modules():
        if isinstance(module, _int8.Int8Linear):
            module._shared = None
    ids = torch.arange(1000, 1200).reshape(2, 100)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        assert torch.equal(shared(input_ids=ids, attention_mask=mask).logits,
                           alone(input_ids=ids, attention_mask=mask).logits)
    assert layer.query._shared.last is None  # read by all three: nothing is held after the pass


def test_threads_running_one_int8_model_get_their_own_answers(weights):
    m = load_model(weights, precision="int8").model
    inputs = [torch.arange(1000 + 37 * i, 1000 + 37 * i + 64).unsqueeze(0) for i in range(4)]
    with torch.inference_mode():
        alone = [m(input_ids=x, attention_mask=torch.ones_like(x)).logits for x in inputs]
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(4)}

    def run(i: int) -> None:
        with torch.inference_mode():
            for _ in range(10):
                got[i].append(m(input_ids=inputs[i], attention_mask=torch.ones_like(inputs[i])).logits)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(logits, alone[i]) for i in range(4) for logits in got[i])


def test_an_unknown_precision_names_the_known_ones(weights):
    with pytest.raises(LocalModelError, match="float32, bfloat16, int8"):
        load_model(weights, precision="float16")


def test_an_engine_keeps_the_measurement_under_its_configured_cache_dir(weights, tmp_path, two_candidates,
                                                                        monkeypatch):
    # a [local] cache_dir set only in the config file is where the compressor reads and keeps its measurement
    from thrifty.middleware.engine import Engine
    from thrifty.middleware.providers.local._models import machine_key, write_probe
    from thrifty.settings import Settings

    monkeypatch.delenv("THRIFTY_LOCAL__CACHE_DIR", raising=False)
    monkeypatch.setattr(model, "_cache_dir", None)
    root = tmp_path / "models"
    config = tmp_path / "thrifty.toml"
    config.write_text(f"[local]\ncache_dir = {json.dumps(str(root))}\n")

    def no_timing(*args):
        raise AssertionError("timed again")

    monkeypatch.setattr(model, "_time_precisions", no_timing)
    key = machine_key("compressor", *model._identity(weights.resolve()))
    write_probe(root, key, {"float32": 10.0, "int8": 1000.0})
    engine = Engine(Settings.load(config, data_dir=tmp_path / "data"), ledger=False)
    try:
        assert model.probe_root() == root
        assert fast_precision(weights) == "int8"  # read from there, not timed
    finally:
        engine.close()


def test_weights_replaced_in_place_are_a_new_model_to_measure(tmp_path):
    # a transformers directory (no thrifty manifest) is known by its path and its weights' size and time
    # of change: a copy of the same size put in place is measured again, not run at the old one's precision
    import os

    directory = tmp_path / "llmlingua-2"
    directory.mkdir()
    weights = directory / "model.safetensors"
    weights.write_bytes(b"a" * 64)
    first = model._identity(directory)
    weights.write_bytes(b"b" * 64)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert model._identity(directory) != first
    assert model._identity(directory) == model._identity(directory)
