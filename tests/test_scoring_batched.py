"""Batched scoring equals scoring one video at a time, and the scoring pipeline's background reading and writing
keep its guarantees: bounded read-ahead, errors raised in the caller, nothing uncommitted visible, idempotent
re-runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import affect_core.frontend as frontend
import affect_core.inference as inference
import affect_core.scoring as scoring
import affect_core.scoring.pipeline as scoring_pipeline
import affect_core.scoring.predictions as scoring_predictions
from affect_core import runtime
from affect_core.artifact import ModelBundle, TrainedModel
from affect_core.config import FeatureConfig, ModelConfig, RunConfig
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.features import fit_feature_transform
from affect_core.inference import predict_batch
from affect_core.model import AffectModel
from affect_core.scoring import (
    ReadAhead,
    finished_videos,
    predict_tracks,
    read_predictions,
    score_videos,
    video_batches,
)
from affect_core.storage import resolve

FEATURES = 5
# Lengths around the front-end's piece size (set to 64 below) and the alignment window; 1 and 2 frames as edge cases.
LENGTHS = (300, 1, 64, 65, 129, 2, 301, 40)


def make_videos(lengths=LENGTHS, *, missing: bool = True, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    videos = []
    for i, n in enumerate(lengths):
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        if missing and n > 20:
            x[n // 3 : n // 3 + 7] = np.nan  # a run without a face
            if i % 2:
                x[-5:] = np.nan  # the video ends without a face
            else:
                x[:3] = np.nan  # ... or starts without one
        videos.append(x)
    return videos


def make_model(model: str, align: str, dimension: str = "arousal", pooling: int = 0):
    torch.manual_seed(0)
    transform = fit_feature_transform(make_videos(seed=9), FeatureConfig(pooling_window=pooling))
    config = ModelConfig(
        model=model,
        align=align,
        dimension=dimension,
        input_dim=transform.output_dim,
        window=30,
        manual_shift=-12 if align == "manual" else None,
        mu_init_frames=9,
    )
    return AffectModel(config), transform


@pytest.fixture(autouse=True)
def small_front_end_pieces(monkeypatch):
    """Several front-end pieces per batch even for short test videos."""
    monkeypatch.setattr(frontend, "INFERENCE_PIECE", 64)


def alone(model, transform, features) -> inference.Prediction:
    """One video through the model's forward pass, whole and unbatched: what every batched path must equal."""
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(transform.apply(features)).unsqueeze(0))
    model.train(was_training)
    levels = out.levels()[0].numpy()
    variances = np.full_like(levels, np.nan) if out.y_var is None else out.y_var[0].detach().numpy()
    return inference.Prediction(model.config.affect_dimensions, levels, variances)


def assert_same(got, expected):
    assert got.dimensions == expected.dimensions
    assert got.levels.shape == expected.levels.shape
    np.testing.assert_allclose(got.levels, expected.levels, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.variances, expected.variances, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize(
    "model,align,dimension,pooling",
    [
        ("lstm-kf", "adaptive", "arousal", 0),
        ("lstm-kf", "manual", "valence", 9),
        ("lstm-kf", "none", "joint", 0),
        ("lstm-ekf", "adaptive", "joint", 0),
        ("lstm-ekf", "manual", "arousal", 0),
        ("lstm-ekf", "none", "valence", 4),
        ("baseline", "adaptive", "arousal", 0),
        ("baseline", "manual", "joint", 0),
        ("baseline", "none", "valence", 0),
    ],
)
@pytest.mark.parametrize("missing", [True, False])
def test_a_batch_equals_each_video_alone(model, align, dimension, pooling, missing):
    m, transform = make_model(model, align, dimension, pooling)
    videos = make_videos(missing=missing)
    batched = predict_batch(m, transform, videos)
    assert len(batched) == len(videos)
    for features, got in zip(videos, batched, strict=True):
        assert_same(got, alone(m, transform, features))


@pytest.mark.parametrize("pooling", [0, 4])
def test_a_batch_of_equal_lengths_equals_each_video_alone(pooling):
    """Videos of one length stack without padding; the transform runs over the batch's frames together (per video
    with pooling)."""
    m, transform = make_model("lstm-kf", "adaptive", "joint", pooling)
    videos = make_videos((120, 120, 120, 120))
    for features, got in zip(videos, predict_batch(m, transform, videos), strict=True):
        assert_same(got, alone(m, transform, features))


def test_videos_longer_than_a_chunk_stream_and_the_rest_are_batched():
    m, transform = make_model("lstm-kf", "adaptive")
    videos = make_videos((300, 1200, 40, 900, 301))
    batched = predict_batch(m, transform, videos, chunk_frames=500)
    for features, got in zip(videos, batched, strict=True):
        assert_same(got, alone(m, transform, features))


def test_a_video_without_any_face_in_a_batch():
    m, transform = make_model("lstm-ekf", "adaptive")
    videos = make_videos((200, 80, 150))
    videos[1][:] = np.nan
    for features, got in zip(videos, predict_batch(m, transform, videos), strict=True):
        assert_same(got, alone(m, transform, features))


def test_empty_videos_and_the_training_mode_is_kept():
    m, transform = make_model("lstm-kf", "adaptive")
    m.train()
    empty, video = np.zeros((0, FEATURES), np.float32), make_videos((50,))[0]
    got = predict_batch(m, transform, [empty, video])
    assert got[0].levels.shape == (0, 1) and got[0].variances.shape == (0, 1)
    assert_same(got[1], alone(m, transform, video))
    assert m.training


# -- the scoring pipeline -------------------------------------------------------------------------------------------


def make_bundle(model: str = "lstm-kf", align: str = "adaptive", dimension: str = "joint") -> ModelBundle:
    m, transform = make_model(model, align, dimension, pooling=5)
    config = RunConfig()
    config.model = m.config
    m.eval()
    names = [f"f{i}" for i in range(FEATURES)]
    return ModelBundle([TrainedModel("m", m, transform, config)], names, "features", 25.0)


def corpus(lengths=LENGTHS) -> list[Video]:
    return [Video(f"test_{i}", "test", x, np.arange(len(x)) / 25.0, 25.0) for i, x in enumerate(make_videos(lengths))]


def test_score_videos_equals_each_video_predicted_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_pipeline, "BATCH_VIDEOS", 3)  # several batches, and a part queue that fills up
    monkeypatch.setattr(scoring_pipeline, "CHUNK_FRAMES", 250)  # the 300-frame videos stream in chunks
    bundle, videos = make_bundle(), corpus()
    result = score_videos(bundle, iter(videos), str(tmp_path / "p"), feature_names=bundle.feature_names)
    assert (result.videos, result.frames, result.skipped) == (len(videos), sum(v.num_frames for v in videos), 0)
    tables = read_predictions(str(tmp_path / "p"))
    assert sorted(tables) == sorted(v.video_id for v in videos)
    for video in videos:
        table = tables[video.video_id]
        assert table.column("frame").to_pylist() == list(range(video.num_frames))
        assert set(table.column("video_id").to_pylist()) <= {video.video_id}
        assert set(table.column("model_id").to_pylist()) <= {bundle.model_id}
        alone = bundle.predict(video.features)
        for dim in ("arousal", "valence"):
            level, var = alone[dim]
            np.testing.assert_allclose(table.column(dim).to_numpy(zero_copy_only=False), level, atol=1e-5)
            np.testing.assert_allclose(table.column(f"{dim}_var").to_numpy(zero_copy_only=False), var, atol=1e-5)
    assert tables.target.model_id == bundle.model_id


def test_the_model_leaves_a_core_to_reading_and_writing_and_torch_threads_are_restored(tmp_path, monkeypatch):
    seen = []
    real = scoring.predict_tracks

    def predict(bundle, features):
        seen.append(torch.get_num_threads())
        return real(bundle, features)

    monkeypatch.setattr(scoring_pipeline, "predict_tracks", predict)
    bundle, before = make_bundle(), torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        score_videos(bundle, corpus((30, 40)), str(tmp_path / "p"), feature_names=bundle.feature_names, progress=False)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_predict_tracks_refuses_features_of_another_width():
    bundle = make_bundle()
    with pytest.raises(AffectError, match="expects 5 features"):
        predict_tracks(bundle, [np.zeros((10, FEATURES), np.float32), np.zeros((10, 3), np.float32)])


def test_a_reader_error_reaches_the_caller_and_a_rerun_finishes_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_pipeline, "BATCH_VIDEOS", 2)
    bundle, videos = make_bundle(), corpus()
    out = str(tmp_path / "p")

    def failing():
        yield from videos[:5]
        raise AffectError("features: row 7 is damaged")

    small = {"target_file_bytes": 1}  # every video closes a file and commits: the crash leaves some committed
    with pytest.raises(AffectError, match="row 7 is damaged"):
        score_videos(bundle, failing(), out, feature_names=bundle.feature_names, progress=False, **small)
    written = finished_videos(resolve(out))
    assert 0 < len(written) and written <= {v.video_id for v in videos[:5]}
    committed = {str(p.relative_to(tmp_path / "p")) for p in (tmp_path / "p").glob("split=*/*.parquet")}
    assert len(committed) == len(written), "uncommitted files were left behind"

    again = score_videos(bundle, iter(videos), out, feature_names=bundle.feature_names, progress=False, **small)
    assert again.skipped == len(written) and again.videos == len(videos)
    for video_id, table in read_predictions(out).items():
        n = next(v.num_frames for v in videos if v.video_id == video_id)
        assert table.column("frame").to_pylist() == list(range(n)), f"{video_id}: duplicate or missing frames"


def test_a_write_error_reaches_the_caller_and_nothing_is_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_pipeline, "BATCH_VIDEOS", 2)
    real = scoring.prediction_rows

    def table(videos, tracks, model_id, dataset_version=""):
        if any(v.video_id == "test_3" for v in videos):
            raise OSError("disk full")
        return real(videos, tracks, model_id, dataset_version)

    monkeypatch.setattr(scoring_predictions, "prediction_rows", table)
    bundle = make_bundle()
    with pytest.raises(OSError, match="disk full"):
        score_videos(bundle, iter(corpus()), str(tmp_path / "p"), feature_names=bundle.feature_names, progress=False)
    assert finished_videos(resolve(str(tmp_path / "p"))) == set()
    assert not list((tmp_path / "p").glob("split=*/*.parquet")), "uncommitted files were left behind"


def test_video_batches_respect_the_limits():
    videos = corpus((10, 10, 10, 10, 30, 5, 400, 10))
    lengths = [[v.num_frames for v in b] for b in video_batches(videos, max_videos=3, max_frames=60)]
    # At most 3 videos; 10 and 30 padded to 2 x 30 = 60 frames, a third would make 3 x 30 > 60; a video over the
    # frame budget on its own is still a batch.
    assert lengths == [[10, 10, 10], [10, 30], [5], [400], [10]]


def test_video_batches_give_a_long_video_a_batch_of_its_own(monkeypatch):
    monkeypatch.setattr(scoring_pipeline, "CHUNK_FRAMES", 100)
    videos = corpus((10, 10, 400, 10))
    assert [[v.num_frames for v in b] for b in video_batches(videos)] == [[10, 10], [400], [10]]


def test_read_ahead_stays_within_its_frame_budget():
    pulled = []
    consumed = 0
    ahead = []

    def source():
        for i in range(40):
            pulled.append(i)
            yield Video(f"v{i}", "test", np.zeros((10, 1), np.float32), np.zeros(10), 25.0)

    with ReadAhead(source(), max_frames=30) as incoming:
        for _ in incoming:
            consumed += 1
            ahead.append(len(pulled) - consumed)
    assert consumed == 40
    # At most 30 frames (3 videos) queued, plus the one the reader holds while it waits.
    assert max(ahead) <= 4


def test_leaving_read_ahead_early_stops_the_reader():
    closed = []

    def source():
        try:
            for i in range(1000):
                yield Video(f"v{i}", "test", np.zeros((10, 1), np.float32), np.zeros(10), 25.0)
        finally:
            closed.append(True)

    reader = ReadAhead(source(), max_frames=20)
    with reader as incoming:
        next(iter(incoming))
    assert closed == [True]
    assert not reader._thread.is_alive()


def test_prediction_rows_of_a_batch_keep_each_video_whole_and_in_order():
    videos = corpus((3, 1, 4))
    tracks = [
        {"arousal": (np.arange(v.num_frames, dtype=np.float32) + i, np.full(v.num_frames, np.nan, np.float32))}
        for i, v in enumerate(videos)
    ]
    tracks[1]["valence"] = (np.array([0.5], np.float32), np.array([0.25], np.float32))
    table = scoring.prediction_rows(videos, tracks, "m1", "7")
    assert table.schema.equals(scoring.PREDICTION_SCHEMA)
    assert table.column("video_id").to_pylist() == [v.video_id for v in videos for _ in range(v.num_frames)]
    assert table.column("frame").to_pylist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert table.column("arousal").to_pylist() == [0, 1, 2, 1, 2, 3, 4, 5]
    assert table.column("valence").to_pylist() == [None] * 3 + [0.5] + [None] * 4  # missing dimension: null
    assert table.column("valence_var").to_pylist()[3] == 0.25 and table.column("arousal_var").null_count == 8
    np.testing.assert_array_equal(table.column("time_s").to_numpy(), np.concatenate([v.time_s for v in videos]))
    assert set(table.column("model_id").to_pylist()) == {"m1"} and set(table.column("dataset_version").to_pylist()) == {
        "7"
    }


def test_scoring_shortens_the_gil_switch_interval_only_while_it_runs(tmp_path):
    import sys

    seen = []

    def predict(features):
        seen.append(sys.getswitchinterval())
        return [{"arousal": (np.zeros(len(f), np.float32),) * 2} for f in features]

    bundle = make_bundle()
    before = sys.getswitchinterval()
    score_videos(
        bundle, iter(corpus()), str(tmp_path / "p"), feature_names=bundle.feature_names, progress=False, predict=predict
    )
    assert seen and set(seen) == {min(before, scoring.SWITCH_INTERVAL_S)}
    assert sys.getswitchinterval() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux")
def test_reading_and_writing_threads_yield_to_the_model():
    import os
    import threading

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: dict[str, list[int]] = {"read": [], "predict": [], "write": []}

    def videos():
        for video in corpus((30, 40, 50)):
            seen["read"].append(niceness())
            yield video

    def predict(features):
        seen["predict"].append(niceness())
        return [{"arousal": (np.zeros(len(f), np.float32),) * 2} for f in features]

    class Out:
        @staticmethod
        def add_batch(videos, tracks):
            seen["write"].append(niceness())

    caller = niceness()
    scoring.score_stream(make_bundle(), videos(), Out(), batch_videos=1, predict=predict)
    expected = min(19, caller + runtime.BACKGROUND_NICENESS)
    assert seen == {"read": [expected] * 3, "predict": [caller] * 3, "write": [expected] * 3}
    assert niceness() == caller
