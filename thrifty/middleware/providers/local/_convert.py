"""Convert a GGUF file once into a cached safetensors model directory.

Loading a GGUF with transformers dequantizes every tensor (15-47 s, and
``from_pretrained(gguf_file=...)`` also wants ``accelerate``), while a
safetensors copy loads in about 2 s. So the first use of a GGUF model builds a
clean model from the GGUF's config, loads the dequantized state dict into it
and saves that with its tokenizer; every later load reads the copy.

The copy is written into a temporary directory beside the target and renamed
into place when complete, so a crash mid-conversion leaves no half-written
cache, and two processes converting at once both end with one good copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thrifty.errors import LocalModelError
from thrifty.middleware.providers.local._catalogue import ModelSource
from thrifty.middleware.providers.local._deps import require_gguf, torch_mod, transformers_mod

__all__ = ["MARKER", "convert_gguf", "is_complete", "quiet_transformers"]

#: written last into a converted directory; its presence means the copy is whole
MARKER = "thrifty-model.json"
FORMAT_VERSION = 1
#: models at least this large are stored in bfloat16 (half the disk); smaller ones in float32
BF16_STORAGE_PARAMS = 1_000_000_000
_STALE_TMP_S = 3600.0


def is_complete(directory: Path) -> bool:
    """True when ``directory`` holds a finished conversion of this format version."""
    try:
        meta = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_VERSION


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars while loading, restoring the caller's choice after."""
    logging = transformers_mod().utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def convert_gguf(source: ModelSource, target: Path, *, sha256: str | None) -> float:
    """Write the safetensors copy of ``source`` (a GGUF file) to ``target``; return the seconds taken.

    ``sha256`` is recorded in the copy's marker. Any failure is a
    LocalModelError and leaves ``target`` untouched.
    """
    require_gguf()
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with quiet_transformers():
            model, tokenizer = _load_gguf(source)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        meta = {
            "format": FORMAT_VERSION,
            "name": source.name,
            "source": str(source.path),
            "sha256": sha256,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "converted_at": int(time.time()),
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # not a lost race with another process: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except LocalModelError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LocalModelError(
            f"could not convert local model {source.name!r} from {source.path}: {exc}"
        ) from exc
    return time.perf_counter() - started


def _load_gguf(source: ModelSource) -> tuple[Any, Any]:
    torch = torch_mod()
    transformers = transformers_mod()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, filename = str(source.path.parent), source.path.name
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    checkpoint = load_gguf_checkpoint(str(source.path), return_tensors=True, model_to_load=model)
    result = model.load_state_dict(checkpoint["tensors"], strict=False)
    tied = set(_tied_keys(model)) if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing:
        raise LocalModelError(
            f"the GGUF file {source.path} lacks weights the model needs ({', '.join(missing[:5])}); "
            "the file is incomplete or of an architecture transformers cannot read"
        )
    model.tie_weights()
    if sum(p.numel() for p in model.parameters()) >= BF16_STORAGE_PARAMS:
        model = model.to(torch.bfloat16)
    model.eval()
    return model, tokenizer


def _tied_keys(model: Any) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys()) if isinstance(keys, dict) else list(keys)


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary directories that a crashed conversion of ``target`` left behind."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(leftover, ignore_errors=True)
