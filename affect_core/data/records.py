"""In-memory records shared by the readers, the dataset store, the generator, training and scoring."""

from __future__ import annotations

import json
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
    ratings: per-rater traces on the same frames, "<dimension>/<rater>" -> (T,) float32 (NaN where a rater gave
    none), or None when the source has no per-rater ratings.
    """

    video_id: str
    split: str
    features: np.ndarray
    time_s: np.ndarray
    fps: float
    arousal: np.ndarray | None = None
    valence: np.ndarray | None = None
    ratings: dict[str, np.ndarray] | None = None

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
    """A set of videos sharing one feature space and frame rate.

    metadata["feature_sets"]: JSON list of {name, start, stop, ...}; a set that exists once per affect dimension
    (the AVEC2016 release) carries "set" and "dimension" and is read only by models of that dimension."""

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

    def dimension_columns(self, dimensions: tuple[str, ...] | list[str]) -> list[int] | None:
        """Feature columns a model of ``dimensions`` reads, or None for every column.

        Sets recorded with a "dimension" are read only by a model of that dimension; sets without one by every
        model. A joint model (both dimensions) reads both dimensions' versions, in corpus column order."""
        raw = self.metadata.get("feature_sets", "")
        sets = json.loads(raw) if raw.startswith("[") else []  # a generated corpus records "name:dim,..."
        if not any(s.get("dimension") for s in sets):
            return None
        return [
            column
            for s in sets
            if not s.get("dimension") or s["dimension"] in dimensions
            for column in range(int(s["start"]), int(s["stop"]))
        ]
