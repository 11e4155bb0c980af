# specbench: `make setup` installs everything (system packages, then .venv); see README.md.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := espeak-ng fortunes

.PHONY: setup system venv test quickstart lint bench assets corpus codec target-model draft-model clean-runs

setup: system venv

system:
	@if command -v espeak-ng >/dev/null 2>&1 && [ -d /usr/share/games/fortunes ]; then \
	  echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchaudio==2.11.0
	$(BIN)/pip install -q -e '.[encodec,dev]'
	# resemblyzer's declared deps (webrtcvad sdist, typing) break its import; its needs come from pyproject
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4
	@$(BIN)/python -c "import specbench, torch, resemblyzer, faster_whisper, encodec; print('specbench', specbench.__version__, '| torch', torch.__version__)"

test:
	$(BIN)/pytest -q

quickstart:
	$(BIN)/specbench run recipes/quickstart.yaml

lint:
	$(BIN)/ruff check specbench tests

# Speed of baseline vs SD vs SSD in one process (ratios, loop overhead, verify cost); not a test.
bench:
	$(BIN)/specbench bench recipes/bench.yaml --out results/bench-cpu.md

# Rebuild the shipped files from scratch: corpus (~3 min), codec (~1 min), target model (~75 min on
# 2 CPU cores), SSD draft (~10 min).
assets: corpus codec target-model draft-model

corpus:
	$(BIN)/specbench prepare synthetic --out data/synthetic

codec:
	$(BIN)/specbench train codec --config configs/train/codec-kmeans-mel-1024.yaml --overwrite

target-model:
	$(BIN)/specbench train target --config configs/train/target-small.yaml
	cp runs/train/target-small/model.pt specbench/assets/target-small.pt

draft-model:
	$(BIN)/specbench train draft --config configs/train/draft-ssd.yaml
	cp runs/train/draft-ssd/model.pt specbench/assets/draft-ssd.pt

clean-runs:
	rm -rf runs/quickstart
