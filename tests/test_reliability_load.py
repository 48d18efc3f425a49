"""Load: scoring streams with bounded memory. Peak RSS of `affect score` (each run in its own subprocess) does not grow
with the number of videos (200 against 2000) nor with the length of one video (6 min against 1 hour, 90,000 frames),
and the hour-long video, scored in chunks, equals the same video predicted whole.

Numerical health over long float32 sequences (no NaN, covariances SPD over 100k frames) is tested in
tests/test_filters_stability.py. The same measurements, printed as a table, are benchmarks/load_scoring.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest

from affect_core.artifact import load_bundle
from affect_core.data.dataset import iter_videos
from affect_core.scoring import read_predictions
from benchmarks.load_scoring import measure_score, train_model, write_features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return train_model(str(tmp_path_factory.mktemp("load") / "run"))


def test_peak_memory_does_not_grow_with_the_number_of_videos(model, tmp_path):
    peaks = {}
    for videos in (200, 2000):
        data, preds = tmp_path / f"features-{videos}.parquet", tmp_path / f"preds-{videos}"
        frames = write_features(data, videos, 50)
        peaks[videos] = measure_score(str(data), model, str(preds))["peak_rss_mb"]
        table = pads.dataset(preds, format="parquet").to_table(columns=["video_id", "frame"])
        keys = set(zip(table.column("video_id").to_pylist(), table.column("frame").to_pylist(), strict=True))
        assert table.num_rows == len(keys) == frames
    print(f"peak RSS: 200 videos {peaks[200]:.0f} MB, 2000 videos {peaks[2000]:.0f} MB")
    assert peaks[2000] / peaks[200] < 1.25, peaks
    assert peaks[2000] - peaks[200] < 150, peaks


def test_an_hour_long_video_scores_in_bounded_memory_and_equals_the_whole(model, tmp_path):
    peaks = {}
    for frames in (9_000, 90_000):
        data = tmp_path / f"video-{frames}.parquet"
        write_features(data, 1, frames)
        peaks[frames] = measure_score(str(data), model, str(tmp_path / f"preds-{frames}"))["peak_rss_mb"]
    print(f"peak RSS: 9,000 frames {peaks[9_000]:.0f} MB, 90,000 frames {peaks[90_000]:.0f} MB")
    assert peaks[90_000] / peaks[9_000] < 1.35, peaks

    bundle = load_bundle(model)
    (video,) = iter_videos(str(tmp_path / "video-90000.parquet"))
    assert video.num_frames == 90_000
    whole = bundle.predict(video.features)  # one pass over the whole video, no chunks
    (scored,) = read_predictions(str(tmp_path / "preds-90000")).values()
    assert scored.column("frame").to_pylist() == list(range(90_000))
    for column, expected in (("arousal", whole["arousal"][0]), ("arousal_var", whole["arousal"][1])):
        got = scored.column(column).to_numpy(zero_copy_only=False)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
