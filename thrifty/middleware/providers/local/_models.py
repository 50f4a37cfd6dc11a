"""Loading local models: once per process, lazily, thread-safe; and the dtype choice.

:func:`model_store` is the process's one cache of loaded models (a model of
135M parameters is ~540 MB in float32; loading it twice would waste memory and
seconds). It is created on first use, not at import. Concurrent first calls
for the same model wait on a per-model lock, so a model is loaded once.

A GGUF model is first converted to a safetensors copy (see ``_convert``) under
``<cache root>/<name>-<hash prefix>``; the cache root is
``settings.local.cache_dir`` or ``<user cache dir>/thrifty/models``. A catalogue
model's file is checked against its pinned SHA-256 once per process, before it
is used.

The dtype: ``settings.local.dtype`` ``float32`` or ``bfloat16`` is used as
given. With ``auto`` the decode speed of both is measured once on this machine
(two interleaved rounds of a few decode steps each, about 2 s for SmolLM2) and the faster is kept
(float32 unless bfloat16 is at least 10% faster, since float32 is more
precise). The measurement is stored in ``<cache root>/dtype-probe.json`` keyed by
model, CPU, torch version and thread count, so later processes skip it;
delete the file to measure again (say, after measuring on a busy machine).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import platformdirs

from thrifty.errors import LocalModelError
from thrifty.middleware.providers.local._catalogue import ModelSource, sha256_file
from thrifty.middleware.providers.local._convert import convert_gguf, is_complete, quiet_transformers
from thrifty.middleware.providers.local._deps import torch_mod, transformers_mod
from thrifty.middleware.providers.local.hooks import LocalModelInfo
from thrifty.settings import LocalModelSettings

__all__ = ["MIN_SPEEDUP", "LoadedModel", "ModelStore", "cpu_flags", "cpu_name", "default_cache_root", "machine_key",
           "model_store", "pick_fastest", "read_probe", "write_probe"]

Dtype = Literal["float32", "bfloat16"]
#: A less precise dtype is chosen only when it is at least this much faster than the more precise one
MIN_SPEEDUP = 1.10
_PROBE_WARMUP_STEPS = 3
_PROBE_STEPS = 8
_PROBE_ROUNDS = 2
_PROBE_FILE = "dtype-probe.json"
#: end-of-turn tokens of common chat formats; a model that emits one has ended its turn
_END_OF_TURN = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


@dataclass(eq=False)
class LoadedModel:
    """A model ready to decode, with what the decode loop needs to know about it.

    ``lock`` serialises generation: decoding is CPU-bound and already uses
    every core torch is given, so two generations at once would each run at
    half speed and hold twice the KV-cache memory. Callers queue on it.
    """

    name: str
    model: Any
    tokenizer: Any
    info: LocalModelInfo
    dtype: Dtype
    cache_kwarg: str  # "cache" (transformers 5) or "past_key_values"
    keeps_logits: bool  # forward() takes logits_to_keep
    load_seconds: float
    convert_seconds: float | None = None
    probe: dict[str, float] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _token_bytes: Any = None

    @property
    def token_bytes(self) -> Any:
        """The model's :class:`~._text.TokenBytes` (built on first use)."""
        if self._token_bytes is None:
            from thrifty.middleware.providers.local._text import TokenBytes

            self._token_bytes = TokenBytes(self.tokenizer)
        return self._token_bytes


def default_cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("thrifty", appauthor=False)) / "models"


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The local models' cache root: ``cache_dir`` (``[local] cache_dir``) where set, else the default."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_root()


class ModelStore:
    """Loaded models by source, cache root and dtype setting; each loaded at most once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], LoadedModel] = {}
        self._loading: dict[tuple[str, str, str], threading.Lock] = {}

    def get(self, source: ModelSource, settings: LocalModelSettings) -> LoadedModel:
        """The loaded model for ``source``, loading it on the first call."""
        root = cache_root(settings.cache_dir)
        key = (source.identity, str(root), settings.dtype)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                return loaded
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                loaded = self._models.get(key)
            if loaded is None:
                loaded = _load(source, root, settings)
                with self._lock:
                    self._models[key] = loaded
        return loaded

    def clear(self) -> None:
        """Forget every loaded model (their memory is freed once no call uses them)."""
        with self._lock:
            self._models.clear()
            self._loading.clear()


@functools.cache
def model_store() -> ModelStore:
    """The process's model store, created on first use."""
    return ModelStore()


def _load(source: ModelSource, root: Path, settings: LocalModelSettings) -> LoadedModel:
    started = time.perf_counter()
    if source.expected_sha256 is not None:
        actual = sha256_file(source.path)
        if actual != source.expected_sha256:
            raise LocalModelError(
                f"the file of local model {source.name!r} ({source.path}) has SHA-256 {actual}, expected "
                f"{source.expected_sha256}; it is corrupt or was replaced: reinstall its package"
            )
    torch = torch_mod()
    transformers_mod()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    convert_seconds: float | None = None
    if source.format == "gguf":
        directory = root / source.cache_name
        if not is_complete(directory):
            convert_seconds = convert_gguf(source, directory, sha256=source.expected_sha256)
            gc.collect()  # free the dequantized copy before measuring or loading
    else:
        directory = source.path
    probe: dict[str, float] | None = None
    if settings.dtype == "auto":
        model, tokenizer, dtype, probe = _load_fastest(source, directory, root)
    else:
        tokenizer = _load_tokenizer(source, directory)
        model = _load_weights(source, directory, settings.dtype)
        dtype = settings.dtype
    return LoadedModel(
        name=source.name,
        model=model,
        tokenizer=tokenizer,
        info=_model_info(source.name, model, tokenizer),
        dtype=dtype,
        cache_kwarg=_forward_kwarg(model),
        keeps_logits="logits_to_keep" in inspect.signature(model.forward).parameters,
        load_seconds=time.perf_counter() - started,
        convert_seconds=convert_seconds,
        probe=probe,
    )


def _load_tokenizer(source: ModelSource, directory: Path) -> Any:
    transformers = transformers_mod()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise LocalModelError(f"could not load the tokenizer of local model {source.name!r}: {exc}") from exc


def _load_weights(source: ModelSource, directory: Path, dtype: Dtype) -> Any:
    torch = torch_mod()
    transformers = transformers_mod()
    try:
        with quiet_transformers():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=getattr(torch, dtype), local_files_only=True
            )
    except Exception as exc:
        raise LocalModelError(
            f"could not load local model {source.name!r} from {directory}: {exc}; if this is a "
            "converted copy, delete the directory to convert again"
        ) from exc
    model.eval()
    return model


def _load_fastest(
    source: ModelSource, directory: Path, root: Path
) -> tuple[Any, Any, Dtype, dict[str, float]]:
    """Load in the dtype that decodes fastest here, measuring both once per machine."""
    tokenizer = _load_tokenizer(source, directory)
    probe_key = machine_key(source.cache_name, str(directory))
    probe = read_probe(root).get(probe_key)
    if probe is not None and {"float32", "bfloat16"} <= probe.keys():
        dtype = _pick(probe)
        return _load_weights(source, directory, dtype), tokenizer, dtype, probe
    models: dict[Dtype, Any] = {
        "float32": _load_weights(source, directory, "float32"),
        "bfloat16": _load_weights(source, directory, "bfloat16"),
    }
    # interleaved rounds, best of each: the first steps a process runs are slow whatever the dtype
    probe = {name: 0.0 for name in models}
    for _ in range(_PROBE_ROUNDS):
        for name, candidate in models.items():
            probe[name] = max(probe[name], _decode_speed(candidate, tokenizer))
    write_probe(root, probe_key, probe)
    dtype = _pick(probe)
    return models[dtype], tokenizer, dtype, probe


def _pick(probe: dict[str, float]) -> Dtype:
    return cast(Dtype, pick_fastest(probe, get_args(Dtype)))


def pick_fastest(speeds: Mapping[str, float], order: Sequence[str]) -> str:
    """Which of ``order`` (from the most precise) to run, by ``speeds`` (tokens per second): each less precise
    one measured must beat the one chosen so far by :data:`MIN_SPEEDUP`."""
    chosen = order[0]
    for precision in order[1:]:
        if precision in speeds and speeds[precision] >= speeds[chosen] * MIN_SPEEDUP:
            chosen = precision
    return chosen


def _decode_speed(model: Any, tokenizer: Any) -> float:
    """Tokens per second of single-token decode steps after a short prompt (greedy)."""
    torch = torch_mod()
    transformers = transformers_mod()
    kwarg = _forward_kwarg(model)
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)
    cache = transformers.DynamicCache()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids]), use_cache=True, **{kwarg: cache}).logits
        token = int(logits[0, -1].argmax())
        started = 0.0
        for step in range(_PROBE_WARMUP_STEPS + _PROBE_STEPS):
            if step == _PROBE_WARMUP_STEPS:
                started = time.perf_counter()
            logits = model(input_ids=torch.tensor([[token]]), use_cache=True, **{kwarg: cache}).logits
            token = int(logits[0, -1].argmax())
    return _PROBE_STEPS / (time.perf_counter() - started)


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line's value in ``/proc/cpuinfo`` where Linux tells it, else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith(field)), None)
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU's model name where Linux tells it (``/proc/cpuinfo``), else the machine type ("x86_64")."""
    return _cpuinfo("model name") or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags where Linux tells them (``/proc/cpuinfo``), else none."""
    return frozenset((_cpuinfo("flags") or "").split())


def machine_key(*parts: str) -> str:
    """A short key for a measurement of ``parts`` (a model, say) on this CPU, torch version and thread count."""
    torch = torch_mod()
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "")()
    raw = "|".join((*parts, cpu_name(), capability, torch.__version__, str(torch.get_num_threads())))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def read_probe(root: Path) -> dict[str, dict[str, float]]:
    """The speed measurements stored under ``root``, by :func:`machine_key` (empty when none can be read)."""
    try:
        data = json.loads((root / _PROBE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_probe(root: Path, key: str, probe: dict[str, float]) -> None:
    """Add one measurement to the probe file (written atomically; a failure only costs a re-measure)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        data = read_probe(root)
        data[key] = {k: round(v, 2) for k, v in probe.items()}
        fd, tmp = tempfile.mkstemp(prefix=".dtype-probe.", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, root / _PROBE_FILE)
    except OSError:
        pass


def _forward_kwarg(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _model_info(name: str, model: Any, tokenizer: Any) -> LocalModelInfo:
    config = model.config
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    eos: set[int] = set()
    for holder in (config, getattr(model, "generation_config", None), tokenizer):
        value = getattr(holder, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    eos.update(vocab[t] for t in _END_OF_TURN if t in vocab)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)
    if not context:
        limit = getattr(tokenizer, "model_max_length", 0)
        context = limit if 0 < limit < 10_000_000 else 2048
    return LocalModelInfo(
        name=name,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        eos_token_ids=frozenset(eos),
        context_length=int(context),
    )
