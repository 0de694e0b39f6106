# The two commands that matter: `make demo` and `make test`. Both work from a fresh clone with only
# Python >= 3.10 and pip: they create .venv and install the package into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bmca-installed
DEMO_DATA := data/synthetic

.PHONY: install demo test test-bounds lint bench-data clean

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

# Two pytest-xdist workers, each taking whole test files (module fixtures, the Slurm cluster and a file's
# order stay in one process): most of the suite's time is subprocesses starting and polling, which two
# workers overlap (17 min instead of 27 on the 2-core CI VM; docs/benchmarks.md). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The other end of each range pyproject.toml claims: its floor versions, installed over .venv's (--no-deps,
# first on PYTHONPATH), must pass the tests that exercise them (make test covers the newest). Needs PyPI.
# datasets is only the tests' writer of hub-format fixtures; 5.0.0 is the newest that allows hub < 1.31.
BOUNDS := .venv-bounds
FLOORS := webdataset==0.2.86 open_clip_torch==3.1.0 huggingface_hub==1.23.0 pyarrow==21.0.0 \
	hydra-core==1.3.2 omegaconf==2.3.0 accelerate==0.33.0 datasets==5.0.0
BOUNDS_TESTS := tests/unit/data/test_pipeline.py tests/unit/data/test_faults.py \
	tests/unit/data/test_mixing.py tests/unit/test_model.py tests/unit/test_export.py \
	tests/unit/test_start_weights.py tests/unit/test_config.py tests/unit/test_trainer.py \
	tests/integration/data/test_hub_stream.py tests/integration/data/test_hub_commits.py \
	tests/integration/fake_hub tests/integration/eval/test_loader_*.py \
	tests/integration/eval/test_shipped_tasks.py tests/unit/eval/test_items.py tests/unit/eval/test_type_scores.py
test-bounds: install
	rm -rf $(BOUNDS)
	$(PY) -m pip install --quiet --no-deps --target $(BOUNDS) $(FLOORS)
	PYTHONPATH=$(BOUNDS):$(CURDIR) $(PY) -m pytest -q $(BOUNDS_TESTS)

# Decode + augment throughput, ours vs PIL + open_clip's transform (figures in docs/benchmarks.md).
bench-data: install
	$(PY) bench/datapipe.py --n 400 --size 224

lint: install
	$(PY) -m ruff check bmca_clip tests train.py eval.py
	$(PY) -m ruff format --check bmca_clip tests train.py eval.py

clean:
	rm -rf runs data/synthetic .pytest_cache $(BOUNDS)
