"""Lazy imports of the ``local`` extra, with the install hint in the error.

torch and transformers take seconds to import and are optional, so nothing in
this package imports them at module level; code that needs them calls
:func:`torch_mod` or :func:`transformers_mod` inside the function.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from thrifty.errors import LocalModelError

INSTALL_HINT = "install the local-model extra: pip install 'thrifty[local]'"


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LocalModelError(f"local models need the {module!r} package; {INSTALL_HINT}") from exc


def torch_mod() -> ModuleType:
    """The ``torch`` module, or LocalModelError with the install hint."""
    return _require("torch")


def transformers_mod() -> ModuleType:
    """The ``transformers`` module, or LocalModelError with the install hint.

    Local models never touch the Hugging Face hub: every loading call passes
    ``local_files_only=True`` (the process's ``HF_HUB_OFFLINE`` is left alone).
    """
    _require("torch")
    return _require("transformers")


def require_gguf() -> None:
    """Check that the ``gguf`` reader is installed (GGUF conversion needs it)."""
    _require("gguf")
