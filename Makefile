# contaudio tasks. `make setup bench` on a fresh machine; `make test` for the tests.
PYTHON ?= python3
# CPU machines: the pinned torch; on Linux, PyPI's torch is the multi-GB CUDA build, so point TORCH_INDEX at
# PyTorch's CPU wheel index (see README): make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# GPU machines: install your own torch first, then `make setup TORCH=` to keep it.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup test test-avx2 test-espnet test-min espnet-env lint smoke bench sweep demo extract-bench

setup:
	$(if $(TORCH),$(PYTHON) -m pip install $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)",) "$(TORCH)",)
	$(PYTHON) -m pip install -e ".[dev,report]"

# pytest-xdist workers: one per core, at most 4 (each holds its own torch and tiny checkpoints)
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(len(os.sched_getaffinity(0)), 4))" 2>/dev/null || echo 1)
PYTEST = -m pytest -q -m "not slow" -n $(TEST_WORKERS)

test:
	$(PYTHON) $(PYTEST)

# ESPnet's SpeechLM, the real package: a Python >= 3.12 virtualenv with espnet[speechlm]==202611 and its pinned
# transformers/torch (requirements/espnet-202611.txt), created once under ESPNET_ENV (rebuilt when the pins change),
# then tests/integration/ in it. The integration tests run on their own (--confcutdir): they point the HF cache at
# a temporary folder of tiny checkpoints before transformers is imported.
ESPNET_ENV ?= $(HOME)/.cache/contaudio/espnet-202611
espnet-env:
	bash ci/espnet_env.sh "$(ESPNET_ENV)"

test-espnet: espnet-env
	$(ESPNET_ENV)/bin/python -m pytest -q tests/integration --confcutdir=tests/integration -p no:cacheprovider

# The minimum-versions run: `make test`'s suite in the same environment, where transformers, torch and contaudio's
# other dependencies sit at pyproject's lower bounds (requirements/espnet-202611.txt pins them there).
test-min: espnet-env
	$(ESPNET_ENV)/bin/python $(PYTEST)

# The whole suite once more on AVX2-only kernels, as on an AMD EPYC without AVX-512/AMX (CI runs both):
# these variables make torch, oneDNN and MKL use AVX2 code paths even on a bigger CPU.
AVX2_ONLY = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2:
	$(AVX2_ONLY) $(PYTHON) $(PYTEST)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	$(PYTHON) -m contaudio encode assets/speech/*.wav --weights random --out outputs/demo_features.safetensors

# The README's main job: full-size Qwen2.5-Omni-7B tower, random weights, CPU, dtype=auto (a few minutes).
bench:
	$(PYTHON) -m experiments.bench experiment=readme_bench

# contaudio.extract at corpus scale: lengths mode on 10,000 files (headers vs decoding), then features mode on the
# full-size 7B tower end to end vs encode_batch alone on the same batches and vs the host ceiling (the encoder
# replaced by one returning rows at once), then the tiny card against the host ceiling (a few minutes on 2 cores).
extract-bench:
	$(PYTHON) -m experiments.extract_bench
	$(PYTHON) -m experiments.extract_bench --part features --tag contaudio/tiny-qwen2.5-omni --audio-s 600 \
		--workers auto --threads 1 --out outputs/extract_bench_tiny

# dtype sweep (one job and one wandb run per dtype), then a markdown table + PNG plot.
SWEEP_DIR ?= multirun/dtype_sweep
sweep:
	$(PYTHON) -m experiments.bench -m experiment=dtype_sweep hydra.sweep.dir=$(SWEEP_DIR)
	$(PYTHON) -m experiments.report $(SWEEP_DIR)

# All three experiments on every family's tiny card, tracker off, failures fatal (CI runs this), in each returns=
# mode: the default (lm; Whisper: tower), the tower where it differs from the LM's rows, and hidden states.
# `make smoke MUTATION=oracle_error` (or rows_off_by_one, padding_leak, feature_bug, oracle_drops_row, late_frames)
# injects a known bug: it must fail.
SMOKE_ENCODERS ?= tiny_qwen_omni,tiny_qwen3_omni,tiny_qwen2_audio,tiny_whisper,tiny_voxtral,tiny_qwen3_asr,tiny_audioflamingo3,tiny_glmasr,tiny_granite_speech,tiny_gemma3n,tiny_phi4_multimodal
SMOKE_TOWER_ENCODERS ?= tiny_qwen2_audio,tiny_voxtral,tiny_qwen3_asr,tiny_audioflamingo3,tiny_glmasr,tiny_gemma3n,tiny_phi4_multimodal
MUTATION ?=
smoke:
	$(PYTHON) -m experiments.suite -m experiment=ci_smoke encoder=$(SMOKE_ENCODERS) hydra.sweep.dir=multirun/ci_smoke \
		$(if $(MUTATION),mutation=$(MUTATION),)
	$(PYTHON) -m experiments.suite -m experiment=ci_smoke_modes encoder=$(SMOKE_TOWER_ENCODERS) encoder.returns=tower \
		hydra.sweep.dir=multirun/ci_smoke_tower $(if $(MUTATION),mutation=$(MUTATION),)
	$(PYTHON) -m experiments.suite -m experiment=ci_smoke_modes encoder=$(SMOKE_ENCODERS) encoder.returns=hidden_states \
		'encoder.layers=[0,1]' hydra.sweep.dir=multirun/ci_smoke_hidden $(if $(MUTATION),mutation=$(MUTATION),)
