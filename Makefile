# retromem: `make demo` and `make test` each build .venv from nothing and then run.
# GPU machines: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" FAISS=gpu
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
FAISS ?= cpu
PYTEST_ARGS ?=
DEMO_ARGS ?=
DEMO_DIR ?= work/demo
DEMO_STEPS ?= 10
DEMO_LENGTH ?= 64

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo demo-pretrained test lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(FAISS),bm25,dev]"
	touch $(STAMP)

# 1. zero-shot MiniLM on BEIR SciFact, BM25 (pyserini) and its RRF and interpolation fusions with MiniLM (the
# encoded corpus reused), then SciFact-KILT dev retrieval (R-Prec, Recall@5) over the same abstracts, reusing
# step 1's embeddings; 2. a short RetroMAE pretraining from MiniLM on the SciFact corpus, on its first
# DEMO_LENGTH tokens (its BEIR evaluation is `make demo-pretrained`: another minute of encoding would take the
# demo past 10 minutes on a 2-core CPU without bf16, where MiniLM's own step encodes 20 passages a second;
# batches of 16 are faster there than 64, same scores); 3. a 16-step LUMEN reader (k=2 live layers over fp16
# token memories) on 64 SciFact-KILT train claims, read end to end on dev over the top 2 passages (it shows the
# commands, not learning).
# Reruns reuse what is finished.
demo: $(STAMP)
	$(BIN)/retromem eval beir --dataset scifact --model minilm --batch-size 16 --workdir $(DEMO_DIR)/work $(DEMO_ARGS)
	$(BIN)/retromem eval beir --dataset scifact --method hybrid --fusion all --model minilm --workdir $(DEMO_DIR)/work $(DEMO_ARGS)
	$(BIN)/retromem eval kilt --task scifact-dev --source scifact --model minilm --workdir $(DEMO_DIR)/work
	$(BIN)/retromem pretrain --data scifact --model minilm --objective retromae --max-steps $(DEMO_STEPS) \
		--batch-size 16 --max-length $(DEMO_LENGTH) --save-steps $(DEMO_STEPS) --logging-steps 5 --output $(DEMO_DIR)/retromae
	R=$(DEMO_DIR)/reader; K="--task scifact-train --corpus scifact --limit 64 --run $$R/kilt-train --k 2"; $(BIN)/retromem eval kilt --task scifact-train --source scifact --model minilm --workdir $(DEMO_DIR)/work --output $$R/kilt-train && $(BIN)/retromem read memory $$K --force-gold --output $$R/memory && $(BIN)/retromem read train $$K --memory $$R/memory --max-steps 16 --logging-steps 4 --output $$R/run && $(BIN)/retromem eval kilt --task scifact-dev --source scifact --model minilm --workdir $(DEMO_DIR)/work --reader $$R/run/final --reader-passages 2

# BEIR SciFact with the encoder `make demo` pretrained, on the DEMO_LENGTH tokens it was pretrained on (about a minute)
demo-pretrained: $(STAMP)
	test -d $(DEMO_DIR)/retromae/final || $(MAKE) demo
	$(BIN)/retromem eval beir --dataset scifact --model $(DEMO_DIR)/retromae/final --max-length $(DEMO_LENGTH) --workdir $(DEMO_DIR)/work $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check retromem tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/encode.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
