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

# lint first: CI runs `make test`, so formatting, lint and complexity (C901, max 15) are enforced there too
test: lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks --quick

# The GPU section, on a machine with an NVIDIA GPU, in one command (prints everything it measured):
#   make bench-gpu TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# It first installs fast_jl (traker's CUDA projector; it compiles a kernel, so it needs nvcc) or says why not.
FAST_JL := fast_jl==0.1.3
bench-gpu: $(STAMP)
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: no CUDA device (torch.cuda.is_available() is False)')"
	@nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv || true
	@if $(PY) -c "import fast_jl" 2>/dev/null; then echo "bench-gpu: fast_jl already installed"; \
	elif ! command -v nvcc >/dev/null; then echo "bench-gpu: fast_jl NOT installed: it compiles a CUDA kernel and needs nvcc (the CUDA toolkit), not found here; dense TRAK projections use traker's BasicProjector"; \
	else $(PY) -m pip install -q --no-deps --no-build-isolation -c $(VENV)/constraints.txt $(FAST_JL) $(QUIET_PIP) \
	  && $(PY) -c "import fast_jl; print('bench-gpu: fast_jl installed')" \
	  || echo "bench-gpu: fast_jl failed to build (pip's output above); dense TRAK projections use traker's BasicProjector"; fi
	@$(PY) -m benchmarks gpu; status=$$?; cat benchmarks/results/gpu.md 2>/dev/null || true; exit $$status

clean:
	rm -rf $(VENV) lake .assay
