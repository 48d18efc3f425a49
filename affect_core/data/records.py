"""In-memory records shared by the readers, the dataset store, the generator, training and scoring."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AFFECT_DIMENSIONS = ("arousal", "valence")
SPLITS = ("train", "dev", "test")


@dataclass
class Video:
    """One video: per-frame features and (optionally) gold-standard labels, frames in time order.

    features: shape (T, d) float32; a row of NaN is a frame without a face (missing observation).
    arousal, valence: shape (T,) float32 in [-1, 1], NaN where a frame is unlabelled; None when the video has no labels.
    time_s: shape (T,) float64, the frame times in seconds (frame i at time_s[i]).
    """

    video_id: str
    split: str
    features: np.ndarray
    time_s: np.ndarray
    fps: float
    arousal: np.ndarray | None = None
    valence: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def labelled(self) -> bool:
        return self.arousal is not None or self.valence is not None

    def labels(self, dimension: str) -> np.ndarray | None:
        """The label track of one affect dimension ("arousal" or "valence"), or None."""
        return {"arousal": self.arousal, "valence": self.valence}[dimension]


@dataclass
class Corpus:
    """A set of videos sharing one feature space and frame rate."""

    videos: list[Video]
    feature_names: list[str]
    fps: float
    feature_set: str = "features"
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return len(self.feature_names)

    def split(self, name: str) -> list[Video]:
        return [v for v in self.videos if v.split == name]

    @property
    def splits(self) -> list[str]:
        return sorted({v.split for v in self.videos}, key=lambda s: (SPLITS.index(s) if s in SPLITS else 99, s))
