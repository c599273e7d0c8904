# Two commands do all set-up on a fresh machine (idempotent): `make demo` and `make test`.
# The virtual environment lives in .venv; torch/torchvision are pinned to the wheels this project
# is tested with (CPU machines take them from the local wheel cache when it has them).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dais_search needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMP)

# The main job on the embedded default: train a dense ResNet-20 on the offline shapes data, then
# search it down to 50% FLOPs, fine-tune with LOP + SP-KD, fold and export (budgets/quickstart.toml).
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/dais-search train --model resnet20 --data shapes:6000 --epochs 4 --lr 0.1 --batch-size 128 \
		--held-out 1000 --out runs/demo/resnet20_shapes.pt --no-progress
	$(VENV)/bin/dais-search run budgets/quickstart.toml --checkpoint runs/demo/resnet20_shapes.pt \
		--out runs/demo/run --no-progress

test: $(STAMP)
	$(VENV)/bin/ruff check dais_search tests benchmarks docs
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
