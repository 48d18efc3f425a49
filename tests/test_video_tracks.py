"""Several people: faces associated across key frames (overlap and centre gates, tracks that end and start), boxes
interpolated per track, the principal face first; ``affect score --faces all`` writes one track per person with its
face_id, the default writes the principal face as face_id 0; a table written before the face_id column is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.config import load_run_config
from affect_core.data.dataset import ingest, read_corpus
from affect_core.errors import AffectError
from affect_core.experiment import train_run
from affect_core.scoring import read_predictions
from affect_core.synth.video import VideoSynthConfig, two_person_frames, write_clip, write_video_corpus
from affect_core.video.config import VideoConfig
from affect_core.video.decode import DecodedFrame, decode_frames
from affect_core.video.detect import FORGET_KEY_FRAMES, Box, FaceDetector
from affect_core.video.score import FACES, score_video_root
from affect_core.video.stored import attach_to_bundle
from affect_core.video.tracks import GATE_IOU, associate, matches, track_people

runner = CliRunner()
FAST = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2, pca_share=0.95)
CLIPS = VideoSynthConfig(videos_per_split=1, frames=30, width=160, height=96, no_face_share=0.0)
LEFT_GAP = (15, 25)


class Scripted:
    """A detector whose faces on frame i are script[i] (the frame's first pixel holds i)."""

    def __init__(self, script: dict[int, list[Box]]) -> None:
        self.script = script

    def detect_all(self, gray: np.ndarray) -> list[Box]:
        return list(self.script.get(int(gray[0, 0]), []))


def frames(count: int) -> list[DecodedFrame]:
    return [DecodedFrame(i, i / 25, np.full((4, 4), i, np.uint8)) for i in range(count)]


def test_a_face_continues_the_track_it_overlaps_or_stays_near_and_a_far_one_does_not() -> None:
    track = Box(100, 100, 50, 50)
    assert matches(track, Box(105, 110, 50, 50)) > 0.5  # overlapping
    assert 0 < matches(track, Box(100, 120, 50, 50)) and matches(track, Box(100, 120, 50, 50)) < 1
    fast = Box(100, 135, 50, 50)  # IoU below the gate, centre within the centre gate
    assert 0 < matches(track, fast) < GATE_IOU
    assert matches(track, Box(100, 140, 50, 50)) == 0  # beyond both gates
    assert matches(track, Box(100, 200, 50, 50)) == 0  # another person beside
    assert matches(track, Box(90, 90, 120, 120)) == 0  # centre near but twice the size and more
    # Greedy, one face per track: the best pair first, the other face left to start a track.
    taken = associate({0: Box(0, 0, 50, 50), 1: Box(0, 200, 50, 50)}, [Box(0, 205, 50, 50), Box(0, 300, 50, 50)])
    assert taken == {0: 1}


def test_tracks_interpolate_end_after_unseen_key_frames_and_start_for_new_faces() -> None:
    every, count = 5, 5 * (FORGET_KEY_FRAMES + 8) + 1
    keys = range(0, count, every)
    a = {k: [Box(10, 10 + k, 40, 40)] for k in keys}  # the principal: every key frame, moving right
    script = {k: list(a[k]) for k in keys}
    for k in (10, 15, 20):  # a second person on three key frames
        script[k].append(Box(10, 300, 40, 40))
    gone = 20 + every * (FORGET_KEY_FRAMES + 1)  # back after the track has ended: a new track
    for k in (gone, gone + every):
        script[k].append(Box(10, 300, 40, 40))
    script[50] = script[50] + [Box(200, 200, 40, 40)]  # one false face on one key frame: dropped
    tracks = track_people(frames(count), Scripted(script), detect_every=every)
    assert tracks.count == 3
    seen = np.isfinite(tracks.boxes[:, :, 0])
    assert seen[0].all()  # the principal
    np.testing.assert_allclose(tracks.boxes[0, :, 1], 10 + np.arange(count))  # interpolated between key frames
    np.testing.assert_array_equal(np.flatnonzero(seen[1]), np.arange(10, 21))
    np.testing.assert_array_equal(np.flatnonzero(seen[2]), np.arange(gone, gone + every + 1))
    np.testing.assert_allclose(tracks.centre_x()[1:], [320, 320])


def test_two_people_are_two_tracks_the_one_always_seen_is_principal(tmp_path: Path) -> None:
    images, centres = two_person_frames(40, left_gap=LEFT_GAP)
    write_clip(tmp_path / "two.mp4", images, 25.0)
    tracks = track_people(decode_frames(str(tmp_path / "two.mp4"), "two"), FaceDetector(), detect_every=5)
    assert tracks.count == 2
    seen = np.isfinite(tracks.boxes[:, :, 0])
    assert seen[0].all()  # the right person, in every frame
    assert not seen[1, LEFT_GAP[0] : LEFT_GAP[1]].any() and seen[1, :10].all() and seen[1, 25:].all()
    x = tracks.centre_x()
    assert x[1] < 180 < x[0]
    for track, person in ((0, 1), (1, 0)):
        box = tracks.boxes[track][seen[track]]
        centre = box[:, :2] + box[:, 2:] / 2
        np.testing.assert_allclose(centre, centres[seen[track], person], atol=12)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tracks")
    write_video_corpus(CLIPS, base / "root")
    ingest(str(base / "root"), str(base / "dataset"), layout="video", video_config=FAST, progress=False)
    config = load_run_config(None, model="baseline", align="none", epochs=1)
    corpus = read_corpus(str(base / "dataset"), splits=None)
    outputs = train_run(corpus, str(base / "run"), config, dimension="arousal", seeds=1, progress=False)
    assert attach_to_bundle(str(base / "dataset"), outputs["model"])
    return Path(outputs["model"])


def test_score_faces_all_writes_one_track_per_person_with_its_face_id(model: Path, tmp_path: Path) -> None:
    videos = tmp_path / "root" / "videos"
    videos.mkdir(parents=True)
    images, _ = two_person_frames(30, left_gap=LEFT_GAP)
    write_clip(videos / "two.mp4", images, 25.0)
    write_clip(videos / "blank.mp4", [np.full((96, 160), 128, np.uint8)] * 10, 25.0)
    args = ["score", str(tmp_path / "root"), "--model", str(model), "--no-progress"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "one")]).exit_code == 0
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "all"), "--faces", "all"])
    assert done.exit_code == 0, done.output
    one, every = read_predictions(str(tmp_path / "one")), read_predictions(str(tmp_path / "all"))
    table = every["two"]
    face_id = table.column("face_id").to_numpy()
    assert table.schema.field("face_id").type == "int32"
    np.testing.assert_array_equal(face_id, np.repeat([0, 1], 30))
    np.testing.assert_array_equal(table.column("frame").to_numpy(), np.tile(np.arange(30), 2))
    face = table.column("face").to_numpy(zero_copy_only=False)
    assert face[:30].all()  # the right person, always there
    assert not face[30 + LEFT_GAP[0] : 30 + LEFT_GAP[1]].any() and face[30:40].all()
    assert np.isfinite(table.column("arousal").to_numpy()).all()
    # The default: one track, face_id 0; a video without a face: one track without a face either way.
    assert (one["two"].column("face_id").to_numpy() == 0).all() and one["two"].num_rows == 30
    for store in (one, every):
        assert store["blank"].num_rows == 10 and not store["blank"].column("face").to_numpy(zero_copy_only=False).any()
    assert every.frames() == 70
    # A re-run resumes: every video (both tracks of "two") already scored is skipped, counted in videos, not tracks.
    again = score_video_root(str(tmp_path / "root"), str(model), str(tmp_path / "all"), faces="all", progress=False)
    assert (again.videos, again.skipped, again.failed) == (2, 2, [])
    assert read_predictions(str(tmp_path / "all")).frames() == 70
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--faces", "some"])
    assert refused.exit_code != 0 and "--faces some" in refused.output and ", ".join(FACES) in refused.output
    dataset = model.parents[1] / "dataset"  # a dataset's rows are one face a frame: --faces all is refused
    assert dataset.is_dir()
    on_dataset = ["score", str(dataset), "--model", str(model), "--out", str(tmp_path / "ds"), "--faces", "all"]
    refused = runner.invoke(app, [*on_dataset, "--no-progress"])
    assert refused.exit_code != 0 and "--faces all: only for a folder of videos" in refused.output


def test_predictions_written_before_the_face_id_column_are_still_read(ingested_source, tmp_path: Path) -> None:
    import pyarrow as pa

    from affect_core.data import delta
    from affect_core.scoring import PREDICTION_SCHEMA, PredictionTarget, prediction_rows
    from affect_core.storage import resolve

    old_schema = pa.schema([f for f in PREDICTION_SCHEMA if f.name != "face_id"])
    loc = resolve(str(tmp_path / "old"))
    files, written = delta.FileWriter(loc, old_schema, target_file_bytes=1 << 30), []
    for video in read_corpus(ingested_source.url, splits=None).videos:
        n = video.num_frames
        tracks = [{"arousal": (np.linspace(-0.5, 0.5, n, dtype=np.float32), np.full(n, 0.1, np.float32))}]
        rows = prediction_rows([video], tracks, "m").drop_columns(["face_id"])
        written += files.add_videos(rows, [delta.VideoEntry(video.video_id, video.split, n)])
    delta.commit(
        loc, old_schema, added=[*written, *files.close()], read_version=None, metadata=PredictionTarget("m").metadata()
    )
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "old"), ingested_source.url])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| dev | arousal |" in evaluated.output
    listed = runner.invoke(app, ["info", str(tmp_path / "old")])
    assert listed.exit_code == 0, listed.output


def test_a_videos_tracks_split_across_batches_are_written_as_one_video(tmp_path: Path) -> None:
    from affect_core.data import delta
    from affect_core.scoring import PredictionTarget, PredictionWriter
    from affect_core.scoring.predictions import GridVideo
    from affect_core.storage import resolve

    def track(video_id: str, face_id: int, faces: int, n: int) -> tuple[GridVideo, dict]:
        times = np.arange(n) / 25
        features = np.ones((n, 2), np.float32)
        if face_id:
            features[: n // 2] = np.nan
        video = GridVideo(
            video_id,
            "test",
            features,
            times,
            25.0,
            frame_time_s=times,
            frame_face=np.isfinite(features[:, 0]),
            face_id=face_id,
            faces=faces,
        )
        level = np.full(n, 0.1 * (face_id + 1), np.float32)
        return video, {"arousal": (level, np.full(n, 0.01, np.float32))}

    out = resolve(str(tmp_path / "pred"))
    writer = PredictionWriter(out, PredictionTarget("m"), snapshot=None, replace=False)
    a0, a1, a2, b0 = track("a", 0, 3, 8), track("a", 1, 3, 8), track("a", 2, 3, 8), track("b", 0, 1, 4)
    writer.add_batch([a0[0], a1[0]], [a0[1], a1[1]])  # a's third track comes in the next batch
    writer.add_batch([a2[0], b0[0]], [a2[1], b0[1]])
    writer.close()
    snapshot = delta.snapshot(out)
    entries = {e.video_id: e for e in snapshot.entries()}
    assert set(entries) == {"a", "b"}
    assert entries["a"].frames == 24 and entries["a"].frames_without_face == 8 and entries["b"].frames == 4
    rows = read_predictions(str(tmp_path / "pred"))["a"]
    np.testing.assert_array_equal(rows.column("face_id").to_numpy(), np.repeat([0, 1, 2], 8))
    np.testing.assert_allclose(rows.column("arousal").to_numpy(), np.repeat([0.1, 0.2, 0.3], 8), rtol=1e-6)
    # A video whose last track never comes is an error, not a silent half.
    writer = PredictionWriter(resolve(str(tmp_path / "half")), PredictionTarget("m"), snapshot=None, replace=False)
    writer.add_batch([a0[0]], [a0[1]])
    with pytest.raises(AffectError, match="video a ended before all of its face tracks were scored"):
        writer.close()


@pytest.mark.parametrize("name, tracks", [("single_face.mp4", 1), ("no_face.mp4", 0)])
def test_a_real_recording_of_one_person_is_one_track_the_single_face_trackers(tmp_path: Path, name, tracks) -> None:
    from samples import pyfeat_sample_file

    from affect_core.video.detect import track_faces

    path = str(pyfeat_sample_file(name, tmp_path))
    found = track_people(decode_frames(path, name), FaceDetector(), detect_every=5)
    assert found.count == tracks
    if tracks:
        single = [b for _, b in track_faces(decode_frames(path, name), FaceDetector(), detect_every=5)]
        boxes = np.array([[b.top, b.left, b.height, b.width] if b else [np.nan] * 4 for b in single], np.float32)
        np.testing.assert_allclose(found.boxes[0], boxes, rtol=1e-5)


def test_evaluation_of_predictions_scored_with_every_face_takes_the_principal_face() -> None:
    """A labelled video scored with --faces all: the labels are the principal face's, so evaluation reads face_id 0
    and leaves the other people's rows out (it refused before: more predicted frames than labels)."""
    import pyarrow as pa

    from affect_core.data.records import Video
    from affect_core.scoring.evaluation import evaluate_predictions

    frames = 50
    gold = np.sin(np.linspace(0, 3, frames)).astype(np.float32) * 0.5
    video = Video("v", "dev", np.zeros((frames, 2), np.float32), np.arange(frames) / 25.0, 25.0, arousal=gold)
    rows = {
        "frame": np.tile(np.arange(frames, dtype=np.int32), 2),
        "face_id": np.repeat(np.array([0, 1], dtype=np.int32), frames),
        "arousal": np.concatenate([gold, -gold]),  # the principal face predicted exactly, the other opposite
        "valence": np.full(2 * frames, np.nan, np.float32),
        "arousal_var": np.full(2 * frames, 0.01, np.float32),
        "valence_var": np.full(2 * frames, np.nan, np.float32),
    }
    result = evaluate_predictions({"v": pa.table(rows)}, [video])
    assert result["dev"]["arousal"]["ccc"] == pytest.approx(1.0, abs=1e-6)
