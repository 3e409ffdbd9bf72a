# Every target creates and reuses .venv: torch pinned first (alone), then the project, then the offline assets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow bench bench-cost-curve install assets-large lint clean

$(VENV)/.torch: requirements/torch.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements/torch.txt
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml requirements/constraints.txt requirements/assets.txt requirements/gauntlet.txt
	$(PIP) install -c requirements/constraints.txt -e '.[test]'
	$(PIP) install --no-deps -r requirements/assets.txt
	$(PIP) install --no-deps -r requirements/gauntlet.txt
	touch $@

$(VENV)/.assets-large: $(VENV)/.installed requirements/assets-large.txt
	$(PIP) install --no-deps -r requirements/assets-large.txt
	touch $@

# Debian packages some tests need, installed where apt exists; without them those tests are skipped.
# $(call apt_install,PACKAGE,what is skipped without it)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
apt_install = -@command -v apt-get >/dev/null && ($(SUDO) apt-get install -y -q $(1) >/dev/null 2>&1 || \
  ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q $(1) >/dev/null 2>&1)) || \
  echo "note: $(1) is not installed (apt-get install $(1)); $(2) skipped"

FASHION_MNIST := /usr/share/datasets/fashion-mnist
$(FASHION_MNIST):
	$(call apt_install,dataset-fashion-mnist,its tests are)

# Chromium renders report.html in the report test.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(call apt_install,chromium,the report rendering test is)

install: $(VENV)/.installed
assets-large: $(VENV)/.assets-large

demo: $(VENV)/.installed
	$(VENV)/bin/transferlab compare

# One test process per core (pytest-xdist), a file's tests together in one of them, one torch thread each
# (tests/conftest.py): the tests are mostly single-threaded, so this halves the suite's time on 2 cores.
test: $(VENV)/.installed | $(FASHION_MNIST) $(CHROMIUM)
	$(PY) -m pytest -q -n auto --dist loadfile

test-slow: $(VENV)/.assets-large | $(FASHION_MNIST) $(CHROMIUM)
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.assets-large
	$(PY) bench/run.py
	$(PY) bench/merge_latency.py
	$(PY) bench/serve_load.py
	$(PY) bench/onnx_latency.py
	$(PY) bench/compile_step.py

# Hours on 2 CPU cores (full fine-tuning on 23,900 reviews); resumable, so it can be built over several sittings.
bench-cost-curve: $(VENV)/.installed
	$(PY) bench/cost_curve.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs
