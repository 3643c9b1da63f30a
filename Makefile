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

# The README's main job: full-size Qwen2.5-Omni-7B tower, random weights, CPU, bf16 (a few minutes).
bench:
	$(PYTHON) -m experiments.bench experiment=readme_bench

# dtype sweep (one job and one wandb run per dtype), then a markdown table + PNG plot.
SWEEP_DIR ?= multirun/dtype_sweep
sweep:
	$(PYTHON) -m experiments.bench -m experiment=dtype_sweep hydra.sweep.dir=$(SWEEP_DIR)
	$(PYTHON) -m experiments.report $(SWEEP_DIR)

# All three experiments on every family's tiny card, tracker off, failures fatal (CI runs this).
SMOKE_ENCODERS ?= tiny_qwen_omni,tiny_qwen3_omni,tiny_qwen2_audio,tiny_whisper,tiny_voxtral
smoke:
	$(PYTHON) -m experiments.suite -m experiment=ci_smoke encoder=$(SMOKE_ENCODERS) hydra.sweep.dir=multirun/ci_smoke
