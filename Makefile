# contaudio tasks. `make setup bench` on a fresh machine; `make test` for the tests.
PYTHON ?= python3
# CPU machines: the pinned CPU wheel (never the multi-GB CUDA build).
# GPU machines: install your own torch first, then `make setup TORCH=` to keep it.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup test lint smoke bench sweep demo

setup:
	$(if $(TORCH),$(PYTHON) -m pip install "$(TORCH)",)
	$(PYTHON) -m pip install -e ".[dev,report]"

test:
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	$(PYTHON) -m contaudio encode assets/speech/*.wav --weights random --out outputs/demo_features.safetensors
