"""Generated video corpora in the ``video`` layout: a real face whose expression moves with a known latent affect.

The latent affect, the planted annotation lag, the label noise and the no-face runs come from
:func:`affect_core.synth.generator.generate` (same model, same seed semantics). Each frame shows a real face photograph
shipped with an installed package (scikit-image's ``astronaut``, matplotlib's ``grace_hopper``) on a plain textured
background, warped by the latent state of that frame:

- valence bends the mouth region: its corners move up (positive) or down (negative), and the lower face widens;
- arousal stretches the face vertically about the eyes and raises the brows;
- the head drifts by a few pixels (slow sinusoids), as a seated person does.

Frames of a no-face run show the background only. Labels (ROOT/labels/<id>.csv: frameTime, arousal, valence) lag the
latent by ``lag_s``; test videos are unlabelled unless ``test_labels``. Clips are H.264 (libx264, yuv420p) at a
constant rate. Writing goes to a hidden sibling directory renamed to ROOT when complete.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

from affect_core.errors import AffectError
from affect_core.synth.generator import SynthConfig, SyntheticCorpus, generate

FACES = ("astronaut", "grace_hopper")


@dataclass
class VideoSynthConfig:
    """A generated video corpus: ``videos_per_split`` clips per split of ``frames`` frames at ``fps``, ``width`` x
    ``height`` pixels; ``faces`` cycle over the videos; ``warp`` scales the expression's amplitude."""

    videos_per_split: int = 3
    frames: int = 250
    fps: float = 25.0
    width: int = 640
    height: int = 360
    lag_s: float = 1.0
    no_face_share: float = 0.1
    no_face_run_s: float = 1.0
    label_noise: float = 0.03
    test_labels: bool = False
    faces: tuple[str, ...] = field(default_factory=lambda: ("astronaut",))
    warp: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise AffectError(f"video synth: {self.width}x{self.height}: expected even sizes of at least 64 pixels")
        unknown = [f for f in self.faces if f not in FACES]
        if not self.faces or unknown:
            raise AffectError(f"video synth: unknown face {unknown[:1]}; expected one of {', '.join(FACES)}")

    def latent_config(self) -> SynthConfig:
        return SynthConfig(
            videos_per_split=self.videos_per_split,
            frames=self.frames,
            fps=self.fps,
            appearance_dim=1,
            geometric_dim=0,
            lag_s=self.lag_s,
            no_face_share=self.no_face_share,
            no_face_run_s=self.no_face_run_s,
            label_noise=self.label_noise,
            test_labels=self.test_labels,
            seed=self.seed,
        )


@functools.cache
def face_image(name: str) -> np.ndarray:
    """The named photograph's face region, grey float32 in [0, 1], about 1.8 face heights square."""
    from skimage.color import rgb2gray

    from affect_core.video.detect import FaceDetector

    if name == "astronaut":
        from skimage.data import astronaut

        rgb = astronaut()
    elif name == "grace_hopper":
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            rgb = np.asarray(Image.open(handle).convert("RGB"))
    else:
        raise AffectError(f"video synth: unknown face {name!r}; expected one of {', '.join(FACES)}")
    gray = rgb2gray(rgb).astype(np.float32)
    box = FaceDetector(min_face_share=0.1)((gray * 255).astype(np.uint8))
    if box is None:
        raise AffectError(f"video synth: no face found in the {name} image")
    side = 1.8 * box.height
    top = int(max(0, box.top + box.height / 2 - side / 2))
    left = int(max(0, box.left + box.width / 2 - side / 2))
    return gray[top : top + int(side), left : left + int(side)]


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.uniform(-1, 1, 2).astype(np.float32)
    base = 0.45 + 0.15 * (tilt[0] * rows / height + tilt[1] * cols / width)
    return np.clip(base + rng.normal(0, 0.02, (height, width)).astype(np.float32), 0, 1)


def render_face(face: np.ndarray, arousal: float, valence: float, warp: float) -> np.ndarray:
    """face: (S, S) -> (S, S) the face with its expression set by the latent state (arousal, valence in [-1, 1])."""
    s = face.shape[0]
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s  # unit coordinates
    # Landmarks in unit coordinates of the crop (1.8 face heights square, face centred): eyes ~0.42, mouth ~0.64.
    eyes, mouth, centre = 0.42, 0.64, 0.5
    dy = np.zeros_like(x)
    dx = np.zeros_like(x)
    # Arousal: vertical stretch about the eye line, brows raised.
    dy += -0.10 * warp * arousal * (y - eyes)
    dy += 0.03 * warp * arousal * np.exp(-(((y - (eyes - 0.06)) / 0.05) ** 2 + ((x - centre) / 0.18) ** 2))
    # Valence: mouth corners up (smile) or down, lower face wider.
    mouth_zone = np.exp(-(((y - mouth) / 0.07) ** 2) - ((x - centre) / 0.16) ** 2)
    dy += 0.05 * warp * valence * mouth_zone * ((x - centre) / 0.1) ** 2
    dx += -0.06 * warp * valence * (x - centre) * np.clip((y - eyes) / (mouth - eyes), 0, 1.5)
    coords = [(y + dy) * s, (x + dx) * s]
    return map_coordinates(face, coords, order=1, mode="nearest").astype(np.float32)


def render_frame(
    background: np.ndarray,
    face: np.ndarray | None,
    *,
    face_height: int,
    centre: tuple[float, float],
) -> np.ndarray:
    """Paste ``face`` (already expressed) resized to ``face_height`` rows at ``centre`` -> (H, W) uint8 frame."""
    frame = background.copy()
    if face is not None:
        s = face_height
        top, left = int(round(centre[0] - s / 2)), int(round(centre[1] - s / 2))
        grid = (np.arange(s, dtype=np.float32) + 0.5) * face.shape[0] / s - 0.5
        resized = map_coordinates(face, np.meshgrid(grid, grid, indexing="ij"), order=1, mode="nearest")
        r0, c0 = max(0, top), max(0, left)
        r1, c1 = min(frame.shape[0], top + s), min(frame.shape[1], left + s)
        # Feather the square's edge into the background so that its border is not a hard edge.
        ramp = np.minimum(np.arange(s), np.arange(s)[::-1]).astype(np.float32)
        alpha = np.clip(np.minimum(ramp[:, None], ramp[None, :]) / (0.08 * s), 0, 1)
        patch = resized[r0 - top : r1 - top, c0 - left : c1 - left]
        weight = alpha[r0 - top : r1 - top, c0 - left : c1 - left]
        frame[r0:r1, c0:c1] = weight * patch + (1 - weight) * frame[r0:r1, c0:c1]
    return (np.clip(frame, 0, 1) * 255).round().astype(np.uint8)


def face_centre(config: VideoSynthConfig, index: int, phase: float) -> tuple[float, float]:
    """Where the face is centred in frame ``index`` (row, column): a slow drift of a few pixels."""
    t = index / config.fps
    return (
        config.height / 2 + 0.02 * config.height * np.sin(2 * np.pi * t / 7.0 + phase),
        config.width / 2 + 0.03 * config.width * np.sin(2 * np.pi * t / 11.0 + 2 * phase),
    )


def face_height(config: VideoSynthConfig) -> int:
    """Rows of the pasted face crop (the face itself is about 1 / 1.8 of it)."""
    return int(0.8 * config.height)


def write_clip(
    path: Path,
    frames: np.ndarray | list[np.ndarray],
    fps: float,
    *,
    times: np.ndarray | list[float] | None = None,
    rotation: int = 0,
) -> None:
    """Encode grey frames (each (H, W) uint8) as an H.264 clip at a constant ``fps``, or at the presentation
    ``times`` (seconds, increasing; a variable rate, kept to the millisecond) when given. rotation: a display
    rotation in degrees (counter-clockwise, a multiple of 90) written as the stream's display matrix, as a phone does:
    the frames are stored turned by -rotation, and a player (or the decoder) turns them back."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    turns = round(rotation / 90) % 4
    stored = [np.ascontiguousarray(np.rot90(gray, -turns)) for gray in frames]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        first = stored[0]
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast"}
        if times is not None:  # millisecond timestamps, the encoder's own clock too (else it rounds to 1 / fps)
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for number, gray in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuv420p")
            if times is not None:
                frame.pts = round(float(times[number]) * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def scene_frames(
    times: np.ndarray, *, width: int = 160, height: int = 96, face: str = "astronaut", seed: int = 0
) -> list[np.ndarray]:
    """Frames (each (height, width) uint8) of one scene at the given ``times`` (seconds): the face's expression and
    place are smooth functions of time, so clips of the scene at different frame rates show the same thing at the
    same time (what a camera at another rate would record)."""
    rng = np.random.default_rng([seed, 11])
    background = _background(height, width, rng)
    image = face_image(face)
    config = VideoSynthConfig(width=width, height=height, faces=(face,))
    out = []
    for t in np.asarray(times, np.float64):
        arousal, valence = 0.8 * np.sin(2 * np.pi * t / 3.0), 0.8 * np.cos(2 * np.pi * t / 5.0)
        centre = (
            height / 2 + 0.02 * height * np.sin(2 * np.pi * t / 7.0),
            width / 2 + 0.03 * width * np.sin(2 * np.pi * t / 11.0),
        )
        face_crop = render_face(image, float(arousal), float(valence), config.warp)
        out.append(render_frame(background, face_crop, face_height=face_height(config), centre=centre))
    return out


def write_video_corpus(
    config: VideoSynthConfig, out_dir: str | os.PathLike[str], *, overwrite: bool = False, progress: bool = False
) -> SyntheticCorpus:
    """Write the generated clips in the video layout (module docstring) to ``out_dir``; returns the latent corpus
    (whose ``corpus`` holds the labels and face masks; its features are placeholders)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AffectError(f"{out}: exists and is not empty; expected a new or empty directory (or --overwrite)")
    synthetic = generate(config.latent_config())
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        (staging / "videos").mkdir(parents=True)
        (staging / "labels").mkdir()
        lines = ["video_id,split"]
        for number, video in enumerate(tqdm(synthetic.corpus.videos, desc="clips", disable=not progress)):
            rng = np.random.default_rng([config.seed, 7, number])
            background = _background(config.height, config.width, rng)
            face = face_image(config.faces[number % len(config.faces)])
            latent = synthetic.latent[video.video_id]
            present = np.isfinite(video.features[:, 0])
            phase = float(rng.uniform(0, 2 * np.pi))
            frames = [
                render_frame(
                    background,
                    render_face(face, float(latent[i, 0]), float(latent[i, 1]), config.warp) if present[i] else None,
                    face_height=face_height(config),
                    centre=face_centre(config, i, phase),
                )
                for i in range(video.num_frames)
            ]
            write_clip(staging / "videos" / f"{video.video_id}.mp4", frames, config.fps)
            lines.append(f"{video.video_id},{video.split}")
            if video.labelled:
                rows = ["frameTime,arousal,valence"]
                rows += [
                    f"{t:.6f},{a:.6f},{v:.6f}"
                    for t, a, v in zip(video.time_s, video.arousal, video.valence, strict=True)
                ]
                (staging / "labels" / f"{video.video_id}.csv").write_text("\n".join(rows) + "\n")
        (staging / "partition.csv").write_text("\n".join(lines) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return synthetic


def two_person_frames(
    frames: int, *, width: int = 360, height: int = 180, left_gap: tuple[int, int] = (0, 0), seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Grey frames of two people side by side (FACES[0] on the left, FACES[1] on the right, each about 0.55 of the
    frame height and drifting slowly towards each other), the left face absent on frames [left_gap). Returns the
    frames and (frames, 2, 2) face centres (row, column) of the left and right person."""
    background = _background(height, width, np.random.default_rng(seed))
    size = int(0.55 * height)
    centres = np.array(
        [[(height / 2, 0.25 * width + 0.3 * i), (height / 2, 0.75 * width - 0.3 * i)] for i in range(frames)]
    )
    out = []
    for i in range(frames):
        left = (
            None if left_gap[0] <= i < left_gap[1] else render_face(face_image(FACES[0]), 0.3 * np.sin(i / 7), 0.0, 1.0)
        )
        right = render_face(face_image(FACES[1]), 0.0, 0.3 * np.cos(i / 5), 1.0)
        image = render_frame(background, left, face_height=size, centre=tuple(centres[i, 0]))
        image = render_frame(image.astype(np.float32) / 255, right, face_height=size, centre=tuple(centres[i, 1]))
        out.append(image)
    return out, centres
