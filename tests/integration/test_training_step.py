"""One ESPnet training step on CPU, end to end, with ESPnet's ``ContinuousAudioIO`` and with contaudio's.

ESPnet's job from the recipe's YAML (``is_train=False`` at build time, which skips only the flash-attention
assert; then ``model.train()`` and the training preprocessor), ESPnet's preprocessor and ``collate_fn`` on four
clips (16 / 22.05 / 44.1 kHz, mono and stereo), one forward + backward. The same seed makes the new embeddings,
LM head and adaptor identical, so the two losses must agree to float32 precision, and contaudio's audio tower must
take part in the step: every one of its parameters gets a gradient.

ESPnet's ``forward`` ends in Liger's fused linear cross-entropy, a Triton kernel that needs a GPU; here the model's
own ``_embed`` (``encode_batch`` -> adaptor -> placed in the sequence) and transformer run unchanged, and the loss
is torch's cross-entropy on stream 0 (the only stream here) under ESPnet's loss mask, next-token shifted.
"""

from __future__ import annotations

import pytest
import torch
import yaml

SAMPLES = ("utt01", "utt02", "utt03", "utt04")
SEED = 0


def training_step(recipe, contaudio: bool, **io_overrides) -> tuple[float, torch.nn.Module]:
    """``(loss, the continuous-audio IO)`` after one forward + backward of ESPnet's model on ``SAMPLES``.

    ``io_overrides``: extra YAML keys for the ``continuous_audio`` IO (e.g. ``frontend``).
    """
    from espnet2.speechlm.dataloader.dataset import SingleDataset
    from espnet2.speechlm.model.speechlm import speechlm_job

    from contaudio.integrations.espnet import register

    config = yaml.safe_load(recipe.train_yaml.read_text())
    config["multimodal_io"]["continuous_audio"].update(io_overrides)
    before = dict(speechlm_job._multimodal_ios)
    try:
        if contaudio:
            register(speechlm_job._multimodal_ios)
        job = speechlm_job.SpeechLMJobTemplate(config, is_train=False)  # no flash attention on CPU
    finally:
        speechlm_job._multimodal_ios.clear()
        speechlm_job._multimodal_ios.update(before)
    torch.manual_seed(SEED)
    model = job.build_model().train()
    job.is_train = True  # the training preprocessor: the assistant's text is in the sequence, under the loss
    preprocessor = job.build_preprocessor()
    dataset = SingleDataset(str(recipe.data_json))
    task, name = recipe.specifier.split(":")[:2]
    batch = preprocessor.collate_fn([((task, name, key), dataset[key]) for key in SAMPLES])
    batch.pop("keys"), batch.pop("data_stats")
    loss = cpu_loss(model, batch)
    loss.backward()
    return float(loss.detach()), model.multimodal_io_dict["continuous_audio"]


def cpu_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy of stream 0 under ``loss_masks``, on ESPnet's own embeddings and transformer."""
    seqs, masks = batch["seqs"], batch["loss_masks"]
    hidden = model.model(inputs_embeds=model._embed(seqs, batch), use_cache=False).last_hidden_state
    logits = model.lm_head(hidden[:, :-1]).float()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seqs[:, 1:, 0].flatten(), reduction="none")
    weights = masks[:, 1:, 0].flatten().float()
    return (ce * weights).sum() / weights.sum()


@pytest.fixture(scope="module")
def float_recipe(tiny_hub, tmp_path_factory):
    """The recipe with float WAVs: ESPnet's own ``preprocess`` cannot resample the int16 that ``kaldi_audio``
    returns for PCM_16 files (torchaudio refuses integer waveforms), so its class trains only on float audio."""
    from integration.recipe import ENCODER_TAG, build_recipe

    tiny_hub(ENCODER_TAG)
    return build_recipe(tmp_path_factory.mktemp("float_recipe"), subtype="FLOAT")


@pytest.fixture(scope="module")
def espnet_step(float_recipe):
    return training_step(float_recipe, contaudio=False)


@pytest.fixture(scope="module")
def contaudio_step(float_recipe):
    return training_step(float_recipe, contaudio=True)


def test_every_audio_tower_parameter_gets_a_gradient(contaudio_step) -> None:
    _, io = contaudio_step
    parameters = dict(io.named_parameters())
    assert parameters, "contaudio's IO holds no encoder parameters in the training job"
    frozen = [name for name, p in parameters.items() if not p.requires_grad]
    missing = [name for name, p in parameters.items() if p.requires_grad and p.grad is None]
    assert not frozen and not missing, f"frozen: {frozen[:5]}; without a gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in parameters.values())


def test_loss_equals_espnet_class(espnet_step, contaudio_step) -> None:
    """Needs contaudio's ``frontend="espnet"`` (channel 0, torchaudio resampling, normalised features, N // 160)."""
    assert contaudio_step[0] == pytest.approx(espnet_step[0], rel=1e-4, abs=1e-5)


def test_the_loss_check_fails_with_another_frontend(float_recipe, espnet_step) -> None:
    """The same step with the model processor's features (not ESPnet's) gives another loss: the check can fail."""
    loss, _ = training_step(float_recipe, contaudio=True, frontend="processor")
    assert loss != pytest.approx(espnet_step[0], rel=1e-4, abs=1e-5)
