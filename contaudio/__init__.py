"""contaudio: continuous audio features for speech language models."""

from contaudio.io import AbsIO, ContinuousAudioIO

__all__ = ["AbsIO", "ContinuousAudioIO"]
__version__ = "0.1.0"
