"""Settings of video feature extraction, kept with the fitted transform: scoring extracts exactly as ingest did."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from affect_core.errors import AffectError

FACE_DETECTORS = ("dlib-hog", "lbp-cascade")


@dataclass(frozen=True)
class VideoConfig:
    """How faces are found and described.

    face_size: side of the aligned face in pixels. wavelengths: the Gabor bank's scales (wavelength in pixels of the
    aligned face); orientations: angles per scale (AVEC2016: 3 x 6 = 18 filters). blocks: the face is cut into
    blocks x blocks regions, each with its own histograms. volume: frames whose LBP-TOP histograms are pooled per
    frame (odd; each frame's codes also look one frame back and ahead, so a volume spans volume + 2 frames).
    detect_every: face detection on every n-th frame, boxes interpolated between. min_face_share: the smallest face
    searched for, as a share of the frame height. face_detector: which detector finds the faces ("dlib-hog", or
    "lbp-cascade", the detector of transforms stored before this setting existed, which read back with it); part of
    the settings so that a dataset ingested with one detector is extracted again, not reused, under another.
    pca_share: variance the PCA keeps (AVEC2016: 0.99); max_components: at most this many components; pca_frames: at
    most this many train frames (spread evenly over the train videos) are sampled to fit the PCA.
    """

    face_size: int = 64
    wavelengths: tuple[float, ...] = (4.0, 8.0, 16.0)
    orientations: int = 6
    blocks: int = 4
    volume: int = 3
    detect_every: int = 5
    min_face_share: float = 0.2
    face_detector: str = "dlib-hog"
    pca_share: float = 0.99
    max_components: int = 256
    pca_frames: int = 2048

    def __post_init__(self) -> None:
        checks = [
            (self.face_size >= 8, "face_size must be at least 8"),
            (len(self.wavelengths) >= 1 and all(w > 0 for w in self.wavelengths), "wavelengths must be positive"),
            (self.orientations >= 1, "orientations must be at least 1"),
            (1 <= self.blocks <= self.face_size // 4, "blocks must lie in 1..face_size/4"),
            (self.volume >= 1 and self.volume % 2 == 1, "volume must be an odd number of frames"),
            (self.detect_every >= 1, "detect_every must be at least 1"),
            (0 < self.min_face_share <= 1, "min_face_share must lie in (0, 1]"),
            (
                self.face_detector in FACE_DETECTORS,
                f"face_detector must be one of {', '.join(FACE_DETECTORS)}, not {self.face_detector!r}",
            ),
            (0 < self.pca_share <= 1, "pca_share must lie in (0, 1]"),
            (self.max_components >= 1, "max_components must be at least 1"),
            (self.pca_frames >= 2, "pca_frames must be at least 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise AffectError(f"video config: {message}")

    @property
    def filters(self) -> int:
        return len(self.wavelengths) * self.orientations

    @property
    def raw_dim(self) -> int:
        """Length of one frame's LGBP-TOP vector: filters x 3 planes x blocks^2 x 59 uniform-LBP bins."""
        return self.filters * 3 * self.blocks * self.blocks * 59

    @property
    def context(self) -> int:
        """Frames on each side a frame's feature depends on."""
        return 1 + self.volume // 2

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["wavelengths"] = list(self.wavelengths)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "video config") -> VideoConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise AffectError(f"{where}: unknown setting {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
        values = dict(raw)
        # Transforms stored before the setting existed were fitted on faces found by scikit-image's LBP cascade.
        values.setdefault("face_detector", "lbp-cascade")
        if "wavelengths" in values:
            values["wavelengths"] = tuple(float(w) for w in values["wavelengths"])
        for name in ("pca_share", "min_face_share"):
            if name in values and not math.isfinite(float(values[name])):
                raise AffectError(f"{where}: {name} must be a finite number")
        return cls(**values)
