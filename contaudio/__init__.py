"""contaudio: continuous audio features for speech language models."""

from contaudio.extract.store import FeatureStore
from contaudio.io import AbsIO, ContinuousAudioIO

__all__ = ["AbsIO", "ContinuousAudioIO", "FeatureStore"]
__version__ = "0.1.0"
