"""Code that runs in spawned child processes: DDP ranks and DataLoader datasets.

A spawned child finds its target by module name. Under ``--import-mode=importlib``
test modules are named ``tests.test_x``, which a child cannot import; this module is
imported as ``helpers.spawn_targets`` from ``tests/`` (pytest's ``pythonpath`` setting), and
spawned children inherit the parent's ``sys.path``, so they can import it too.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, get_worker_info

from contaudio import ContinuousAudioIO

# ----------------------------------------------------------------------------- DataLoader


class ClipDataset(Dataset):
    """Preprocesses ``(wav, sr)`` clips with ``io`` (a ``copy_for_worker()`` copy) and reports
    what the process that ran it holds: its pid, the copy's parameter count, whether it has an encoder.
    """

    def __init__(self, io: ContinuousAudioIO, clips: list[tuple[np.ndarray, int]]) -> None:
        self.io = io
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        _, (rows, mel), _ = self.io.preprocess(self.clips[index])
        info = get_worker_info()
        return {
            "index": index,
            "rows": rows,
            "mel": mel,
            "find_length": self.io.find_length(self.clips[index]),
            "worker_id": -1 if info is None else info.id,
            "pid": os.getpid(),
            "num_parameters": sum(p.numel() for p in self.io.parameters()),
            "has_encoder": self.io.encoder is not None,
        }


# ----------------------------------------------------------------------------- DDP


class TinySpeechLM(nn.Module):
    """A ContinuousAudioIO, ESPnet's adaptor ``Linear(D, hidden)`` and a head, used as ESPnet's SpeechLM uses them."""

    def __init__(self, audio: ContinuousAudioIO) -> None:
        super().__init__()
        self.audio = audio
        self.adaptor = nn.Linear(audio.feature_dim(), HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, text: torch.Tensor, mel: torch.Tensor | None, lengths: torch.Tensor | None) -> torch.Tensor:
        loss = self.head(text).square().mean()
        if mel is None:  # a batch without audio: ESPnet feeds dummy_forward through its adaptor, weighted 0
            out = self.adaptor(self.audio.dummy_forward(ref_tensor=text))
            return loss + 0.0 * out.sum()
        features = self.adaptor(torch.cat(self.audio.encode_batch(mel, lengths)))
        return loss + self.head(features).square().mean()


HIDDEN = 8  # the "LM" width
DDP_STEPS = 2  # DDP reports a weight that got no gradient at the *next* forward, so take two steps


def ddp_rank(rank: int, init_file: str, out_dir: str, tags: list[str], speech_path: str, timeout_s: float) -> None:
    """One gloo rank, once per tag: rank 0 encodes real speech, rank 1 only calls ``dummy_forward``.

    Every encoder weight is made trainable first (``requires_grad_(True)``, as fine-tuning code
    does), and DDP runs with its defaults (no ``find_unused_parameters``). Saves ``rank{r}.pt``:
    per tag, the parameters after the last step, the gradients it used and (rank 0) the start.
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=timeout_s),  # a stuck collective raises instead of hanging
    )
    try:
        samples, sr = soundfile.read(speech_path, dtype="float32")
        results = {tag: train_two_steps(rank, tag, samples, sr) for tag in tags}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def train_two_steps(rank: int, tag: str, samples: np.ndarray, sr: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TinySpeechLM(ContinuousAudioIO(encoder_hf_model_tag=tag, weights="random", dtype="float32",
                                           long_clip="windows"))  # fmt: skip
    model.audio.encoder.requires_grad_(True)
    ddp = DistributedDataParallel(model)  # defaults on purpose: find_unused_parameters=False
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, (_, mel), _ = model.audio.preprocess((samples, sr))
    mel_batch, lengths = torch.from_numpy(mel)[None], torch.tensor([mel.shape[0]])
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(DDP_STEPS):
        text = torch.randn(4, HIDDEN, generator=generator)
        loss = ddp(text, mel_batch, lengths) if rank == 0 else ddp(text, None, None)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        optimiser.step()
    after = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"after": after, "grads": grads, "before": before if rank == 0 else None}
