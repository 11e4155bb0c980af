# specbench: `make setup` installs everything (system packages, then .venv); see README.md.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := espeak-ng fortunes

.PHONY: setup system venv test quickstart lint bench assets corpus codec codec-25hz target-model draft-model assets-25hz target-model-25hz draft-model-25hz draft-scratch-25hz heads-25hz trees-25hz clean-runs

setup: system venv

system:
	@if command -v espeak-ng >/dev/null 2>&1 && [ -d /usr/share/games/fortunes ]; then \
	  echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

# The venv needs ~6.5 GB (a CUDA build of torch, which is what keeps encodec/speechbrain importable).
VENV_MIN_FREE_KB := 7500000

venv:
	@if ! $(BIN)/python -c "import torch" >/dev/null 2>&1; then \
	  free=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	  if [ "$$free" -lt $(VENV_MIN_FREE_KB) ]; then \
	    echo "error: only $$((free / 1024)) MB free on $$(df -P . | awk 'NR==2 {print $$6}'); make setup needs ~7.5 GB for .venv: free some disk space and run it again" >&2; exit 1; \
	  fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchaudio==2.11.0
	$(BIN)/pip install -q -e '.[encodec,dev,whisper,hf,speechbrain,hf-tts,ray]' torch==2.14.1
	# resemblyzer's declared deps (webrtcvad sdist, typing) break its import; its needs come from pyproject
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4
	# codec backends with wrong declared pins (xcodec2: torch==2.5.0; torchtune: datasets, torchao<0.17;
	# descript-audiotools: protobuf<3.20); what they really need comes from the xcodec2 / dac extras
	$(BIN)/pip install -q --no-deps xcodec2==0.1.5 torchtune==0.6.1 descript-audio-codec==1.0.0 descript-audiotools==0.7.2
	@$(BIN)/python -W ignore -c "import specbench, torch, resemblyzer, faster_whisper, encodec, snac, dac; from specbench.codec.xcodec2_codec import import_xcodec2; import_xcodec2(); print('specbench', specbench.__version__, '| torch', torch.__version__)"

test:
	$(BIN)/pytest -q

quickstart:
	$(BIN)/specbench run recipes/quickstart.yaml

lint:
	$(BIN)/ruff check specbench tests

# Speed of baseline vs SD vs SSD in one process (ratios, loop overhead, verify cost, cost-model bound), on the
# eager and the compiled decode path (model.compile); also writes results/bench-cpu.csv; not a test. The second
# run times the hf-causal path (eager and compiled) on the tiny random Llasa model against transformers' own generate().
bench:
	$(BIN)/specbench bench recipes/bench.yaml --set model.compile=true --out results/bench-cpu.md
	$(BIN)/specbench bench recipes/bench_hf.yaml --set model.compile=true --out results/bench-hf-cpu.md

# Rebuild the shipped files from scratch: corpus (~3 min), codec (~1 min), the plain target (~100 min on
# 2 CPU cores, bf16 on a CPU with native bf16), the aligned target warm-started from it, SSD draft, and the
# 25 Hz set (assets-25hz). Heads: `specbench train heads` (README).
# Minutes measured for each are in README "The built-in model".
assets: corpus codec target-model draft-model assets-25hz

corpus:
	$(BIN)/specbench prepare synthetic --out data/synthetic

codec:
	$(BIN)/specbench train codec --config configs/train/codec-kmeans-mel-1024.yaml --overwrite

# The 25 Hz codec (builtin:kmeans-mel-25hz-4096: stacked pairs of 20 ms frames, 4,096 centroids; ~4 min)
codec-25hz:
	$(BIN)/specbench train codec --config configs/train/codec-kmeans-mel-25hz-4096.yaml --overwrite

runs/train/target-small-plain/model.pt:
	$(BIN)/specbench train target --config configs/train/target-small-plain.yaml $(if $(wildcard runs/train/target-small-plain/last.pt),--resume)

target-model: runs/train/target-small-plain/model.pt
	$(BIN)/specbench train target --config configs/train/target-small.yaml
	cp runs/train/target-small/model.pt specbench/assets/target-small.pt

draft-model:
	$(BIN)/specbench train draft --config configs/train/draft-ssd.yaml
	cp runs/train/draft-ssd/model.pt specbench/assets/draft-ssd.pt

# The 25 Hz set (issue 16; the default model of every recipe): codec (~4 min), aligned target from scratch
# (1,200 steps, ~70 min fp32 on 2 cores), SSD draft from its layers {0, 5}, VADUSA heads on the frozen target
# and their trees calibrated on the dev split. Minutes measured: README "The built-in model".
assets-25hz: codec-25hz target-model-25hz draft-model-25hz draft-scratch-25hz heads-25hz trees-25hz

target-model-25hz:
	$(BIN)/specbench train target --config configs/train/target-small-25hz.yaml $(if $(wildcard runs/train/target-small-25hz/last.pt),--resume)
	cp runs/train/target-small-25hz/model.pt specbench/assets/target-small-25hz.pt

draft-model-25hz:
	$(BIN)/specbench train draft --config configs/train/draft-ssd-25hz.yaml $(if $(wildcard runs/train/draft-ssd-25hz/last.pt),--resume)
	cp runs/train/draft-ssd-25hz/model.pt specbench/assets/draft-ssd-25hz.pt

# an independently trained draft (from scratch, its own duration predictor): recipes/ssd_draft_alignment.yaml
draft-scratch-25hz:
	$(BIN)/specbench train draft --config configs/train/draft-scratch-25hz.yaml $(if $(wildcard runs/train/draft-scratch-25hz/last.pt),--resume)
	cp runs/train/draft-scratch-25hz/model.pt specbench/assets/draft-scratch-25hz.pt

heads-25hz:
	$(BIN)/specbench train heads --config configs/train/heads-25hz.yaml $(if $(wildcard runs/train/heads-25hz/last.pt),--resume)
	cp runs/train/heads-25hz/heads.pt specbench/assets/heads-small-25hz.pt

trees-25hz:
	$(BIN)/specbench calibrate-tree recipes/calibrate-tree.yaml --heads builtin:heads-small-25hz \
	  --budget 16 --budget 32 --budget 64 --name vadusa-25hz --out-dir specbench/assets/trees

clean-runs:
	rm -rf runs/quickstart

# ---- LibriTTS on a GPU (README "Real models and LibriTTS (GPU)") ------------------------------------
#   make libritts LIBRITTS=/data/LibriTTS ENCODEC=/ckpt/encodec_24khz-d7cc33bc.th DEVICE=cuda [LIMIT=N]
# prepares manifests in data/libritts/, trains target / drafts / heads and calibrates trees in
# runs/libritts/ (configs/train/libritts-*.yaml), then runs recipes/libritts_test.yaml and
# recipes/libritts_joint.yaml. A step whose output exists is skipped, an interrupted training resumes from
# its last.pt, an interrupted run from its records. Parts: libritts-data, libritts-train, libritts-trees,
# libritts-run. GPU times are not measured here. The configs and recipes refer to data/libritts and runs/libritts.
.PHONY: libritts libritts-data libritts-train libritts-trees libritts-run

LIBRITTS ?=
ENCODEC ?=
DEVICE ?= auto
LIMIT ?=
LT_TRAIN_SUBSETS ?= train-clean-100 train-clean-360
LT_DATA := data/libritts
LT_RUNS := runs/libritts
LT_SET = --set codec.path=$(ENCODEC) --set device=$(DEVICE)
lt_resume = $(if $(wildcard $(dir $@)last.pt),--resume)
lt_no_libritts = LIBRITTS is not set: pass LIBRITTS=/path/to/LibriTTS, the local folder holding $(LT_TRAIN_SUBSETS) dev-clean test-clean (nothing is downloaded)

ifneq ($(filter libritts libritts-data,$(MAKECMDGOALS)),)
  ifeq ($(strip $(LIBRITTS)),)
    $(error $(lt_no_libritts))
  endif
  ifeq ($(wildcard $(LIBRITTS)/.),)
    $(error LIBRITTS=$(LIBRITTS) is not a folder: pass your local LibriTTS (or LibriTTS-R) folder, the one holding $(LT_TRAIN_SUBSETS) dev-clean test-clean)
  endif
endif
ifneq ($(filter-out libritts-data,$(filter libritts libritts-%,$(MAKECMDGOALS))),)
  ifeq ($(strip $(ENCODEC)),)
    $(error ENCODEC is not set: pass ENCODEC=/path/to/encodec_24khz-d7cc33bc.th, a LOCAL copy of the EnCodec 24 kHz checkpoint (nothing is downloaded))
  endif
  ifeq ($(wildcard $(ENCODEC)),)
    $(error EnCodec weights not found: ENCODEC=$(ENCODEC): point it at a LOCAL copy of encodec_24khz-d7cc33bc.th (nothing is downloaded))
  endif
endif

libritts: libritts-data libritts-run

libritts-data: $(LT_DATA)/train.jsonl $(LT_DATA)/dev-clean.jsonl $(LT_DATA)/test-clean.jsonl

$(addprefix $(LT_DATA)/,$(addsuffix .jsonl,$(LT_TRAIN_SUBSETS) dev-clean test-clean)): $(LT_DATA)/%.jsonl:
	$(if $(strip $(LIBRITTS)),,$(error $(lt_no_libritts)))
	$(BIN)/specbench prepare libritts --root $(LIBRITTS) --subset $* --out $@

$(LT_DATA)/train.jsonl: $(addprefix $(LT_DATA)/,$(addsuffix .jsonl,$(LT_TRAIN_SUBSETS)))
	cat $^ > $@.tmp && mv $@.tmp $@

libritts-train: $(LT_RUNS)/target-base/model.pt $(LT_RUNS)/draft-ssd/model.pt $(LT_RUNS)/draft-scratch/model.pt \
	$(LT_RUNS)/heads/heads.pt $(LT_RUNS)/heads-joint/heads.pt

$(LT_RUNS)/target-base/model.pt: | $(LT_DATA)/train.jsonl $(LT_DATA)/dev-clean.jsonl
	$(BIN)/specbench train target --config configs/train/libritts-target-base.yaml $(LT_SET) $(lt_resume)

$(LT_RUNS)/draft-ssd/model.pt: | $(LT_RUNS)/target-base/model.pt
	$(BIN)/specbench train draft --config configs/train/libritts-draft-ssd.yaml $(LT_SET) $(lt_resume)

$(LT_RUNS)/draft-scratch/model.pt: | $(LT_RUNS)/target-base/model.pt
	$(BIN)/specbench train draft --config configs/train/libritts-draft-scratch.yaml $(LT_SET) $(lt_resume)

$(LT_RUNS)/heads/heads.pt: | $(LT_RUNS)/target-base/model.pt
	$(BIN)/specbench train heads --config configs/train/libritts-heads.yaml $(LT_SET) $(lt_resume)

$(LT_RUNS)/heads-joint/heads.pt: | $(LT_RUNS)/target-base/model.pt
	$(BIN)/specbench train heads --config configs/train/libritts-heads-joint.yaml $(LT_SET) $(lt_resume)

libritts-trees: $(LT_RUNS)/trees/vadusa-64.json $(LT_RUNS)/trees/vadusa-joint-64.json

LT_CALIBRATE = $(BIN)/specbench calibrate-tree recipes/libritts_calibrate.yaml --rule tolerance --tau 3 \
	--budget 16 --budget 32 --budget 64 --out-dir $(LT_RUNS)/trees $(LT_SET)

$(LT_RUNS)/trees/vadusa-64.json: | $(LT_RUNS)/heads/heads.pt $(LT_DATA)/dev-clean.jsonl
	$(LT_CALIBRATE) --heads $(LT_RUNS)/heads/heads.pt --name vadusa

$(LT_RUNS)/trees/vadusa-joint-64.json: | $(LT_RUNS)/heads-joint/heads.pt $(LT_DATA)/dev-clean.jsonl
	$(LT_CALIBRATE) --heads $(LT_RUNS)/heads-joint/heads.pt --name vadusa-joint --set model.checkpoint=$(LT_RUNS)/heads-joint/target.pt

libritts-run: libritts-train libritts-trees $(LT_DATA)/test-clean.jsonl
	$(BIN)/specbench run recipes/libritts_test.yaml $(LT_SET) $(if $(LIMIT),--set corpus.limit=$(LIMIT))
	$(BIN)/specbench run recipes/libritts_joint.yaml $(LT_SET) $(if $(LIMIT),--set corpus.limit=$(LIMIT))

# ---- paper tables and CI regression (README "Reports and paper tables", "CI regression") -----------
#   make table-ssd [DEVICE=cuda] [RUN_ARGS="--set corpus.limit=4"]
# runs recipes/ssd_sweep.yaml into runs/ssd_sweep-$(DEVICE) (one folder per device, so timings of two
# devices never mix in one run; a rerun resumes), then writes results/ssd.md + results/plots/ssd-*.png
# (RUN_ARGS must not move output_dir: paper-table reads runs/<x>_sweep-$(DEVICE)).
# table-vadusa and table-pcg likewise (recipes/vadusa_sweep.yaml, recipes/pcg_sweep.yaml); table-all: all three.
# ci-regression runs recipes/ci.yaml into a fresh $(CI_RUN) and compares it with $(CI_REFERENCE) (exit 1 on a
# regression); ci-reference regenerates that reference (after an intended change of the shipped models).
.PHONY: table-ssd table-vadusa table-pcg table-all table-vadusa-joint ci-reference ci-regression

DEVICE ?= auto
RUN_ARGS ?=
CI_REFERENCE ?= results/ci/reference
CI_RUN ?= runs/ci-check

table-ssd table-vadusa table-pcg: table-%:
	$(BIN)/specbench run recipes/$*_sweep.yaml --set device=$(DEVICE) --set output_dir=runs/$*_sweep-$(DEVICE) $(RUN_ARGS)
	$(BIN)/specbench paper-table $* runs/$*_sweep-$(DEVICE) --out results/$*.md

table-all: table-ssd table-vadusa table-pcg

# Frozen vs joint VADUSA heads on the built-in model: train the joint heads (29.2 min for the 25 Hz target on 2 CPU cores, fp32; they
# fine-tune a copy of the target), calibrate their budget-32 tree on the dev split, run
# recipes/vadusa_joint.yaml, and write one table of the frozen-heads sweep (table-vadusa) and the joint run.
table-vadusa-joint: runs/train/heads-joint/heads.pt runs/trees/vadusa-joint-32.json
	$(BIN)/specbench run recipes/vadusa_joint.yaml --set device=$(DEVICE) --set output_dir=runs/vadusa_joint-$(DEVICE) $(RUN_ARGS)
	$(BIN)/specbench report runs/vadusa_sweep-$(DEVICE) runs/vadusa_joint-$(DEVICE) --out results/vadusa-joint.md

runs/train/heads-joint/heads.pt:
	$(BIN)/specbench train heads --config configs/train/heads-joint.yaml $(if $(wildcard runs/train/heads-joint/last.pt),--resume)

runs/trees/vadusa-joint-32.json: | runs/train/heads-joint/heads.pt
	$(BIN)/specbench calibrate-tree recipes/calibrate-tree.yaml --heads runs/train/heads-joint/heads.pt \
	  --budget 32 --name vadusa-joint --out-dir runs/trees --set model.checkpoint=runs/train/heads-joint/target.pt

ci-regression:
	rm -rf $(CI_RUN)
	$(BIN)/specbench run recipes/ci.yaml --set output_dir=$(CI_RUN)
	$(BIN)/specbench compare $(CI_REFERENCE) $(CI_RUN) --out $(CI_RUN)/compare.md

ci-reference:
	rm -rf runs/ci-reference
	$(BIN)/specbench run recipes/ci.yaml --set output_dir=runs/ci-reference
	$(BIN)/specbench export-reference runs/ci-reference --out $(CI_REFERENCE)
