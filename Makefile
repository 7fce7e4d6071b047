# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
# pip on this machine warns about missing local find-links folders: noise, not errors.
QUIET_PIP := 2>&1 | { grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true; }
VENV ?= .venv
PY := $(VENV)/bin/python
# A GPU user brings their own torch: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# or TORCH_SPEC=skip to keep a torch already in the venv.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.assay-installed

.PHONY: install demo test lint bench bench-gpu clean
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)
	@if [ "$(TORCH_SPEC)" != "skip" ]; then $(PY) -m pip install -q $(TORCH_SPEC) $(QUIET_PIP); fi
	cp constraints.txt $(VENV)/constraints.txt
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >> $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-deps kronfluence traker dattri $(QUIET_PIP)
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[dev,train]' $(QUIET_PIP)
	$(PY) -c "import transformers, kronfluence, trak, torch; import importlib.util as u; assert u.find_spec('torchvision') is None, 'torchvision must stay out'; print('install ok: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/assay demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks --quick

# The GPU section, on a machine with an NVIDIA GPU (a few minutes):
#   make bench-gpu TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
bench-gpu: $(STAMP)
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: no CUDA device (torch.cuda.is_available() is False)')"
	$(PY) -m benchmarks gpu

clean:
	rm -rf $(VENV) lake .assay
