# The two commands that matter: `make demo` and `make test`. Both work from a fresh clone with only
# Python >= 3.10 and pip: they create .venv and install the package into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bmca-installed
DEMO_DATA := data/synthetic

.PHONY: install demo test lint bench-data clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Synthetic corpus -> 300 steps of a small CLIP on the CPU -> zero-shot eval, untrained vs trained.
demo: install
	@test -d $(DEMO_DATA)/train || $(PY) -m bmca_clip.data.synthetic --out $(DEMO_DATA)
	rm -rf runs/demo
	$(PY) train.py experiment=demo
	$(PY) eval.py suite=demo model=bmca-small 'checkpoint=[null,runs/demo]' output_dir=runs/demo/eval

test: install
	$(PY) -m pytest -q

# Decode + augment throughput, ours vs PIL + open_clip's transform (figures in docs/benchmarks.md).
bench-data: install
	$(PY) bench/datapipe.py --n 400 --size 224

lint: install
	$(PY) -m ruff check bmca_clip tests train.py eval.py
	$(PY) -m ruff format --check bmca_clip tests train.py eval.py

clean:
	rm -rf runs data/synthetic .pytest_cache
