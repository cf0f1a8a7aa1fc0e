# make run   — install everything, then run the main job: landscapes, then the real-image sweep
# make toy   — install everything, then run the unit-circle toy sweep (paper Fig. 3)
# make test  — install everything and Chromium, then run the test suite
# make demo  — install everything and Fashion-MNIST, then run the planted-copies demo
# make bench — install everything and Fashion-MNIST, then run the benchmarks in bench/
#
# Only demo and bench read Fashion-MNIST, so only they install it (apt-get, with sudo when
# not root): run and toy read scikit-learn's digits and the circle, and the tests that read
# the real IDX files skip without them. test installs Debian's chromium the same way, for
# tests/test_report_browser.py (report.html in a headless browser), which skips without it.

VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT     := env DEBIAN_FRONTEND=noninteractive apt-get
OUT     ?= runs

.PHONY: install data browser run toy demo test bench clean

install: $(STAMP)

# torch is pinned to the local CPU build here only; the package itself accepts any torch >= 2.1.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

data: $(FMNIST)

$(FMNIST):
	$(SUDO) $(APT) update -qq
	$(SUDO) $(APT) install -y -qq dataset-fashion-mnist

browser: $(CHROMIUM)

# Offline (or without sudo rights), the browser test skips rather than failing make test;
# the attempt is made once (.venv/.no-chromium), not at every make test.
$(CHROMIUM):
	@[ -e $(VENV)/.no-chromium ] || { $(SUDO) $(APT) update -qq && \
		$(SUDO) $(APT) install -y -qq chromium; } || { touch $(VENV)/.no-chromium; \
		echo "chromium not installed: tests/test_report_browser.py will skip"; }

run: install
	$(BIN)/memgen landscape --K 2 9 1000 --beta 20 --out $(OUT)/landscape
	$(BIN)/memgen sweep configs/images-cpu.yaml --out $(OUT)/images-cpu

toy: install
	$(BIN)/memgen sweep configs/toy2d.yaml --out $(OUT)/toy2d

demo: install data
	$(BIN)/memgen demo --out $(OUT)/demo

test: install browser
	$(BIN)/pytest

bench: install data
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/lpips.py
	$(BIN)/python bench/stream.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
