"""The muse layout (MuSe 2021-2023 as its baseline's data parser reads it): millisecond timestamps, segment ids,
devel as the dev split, 2-4 Hz labels on the feature frames, non-integer frame rates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from layout_learning import LAG_S, learning_config, train_and_check

from affect_core.data.dataset import ingest, read_corpus
from affect_core.data.readers import read_source
from affect_core.errors import AffectError
from affect_core.synth import SynthConfig, WriteOptions, write_corpus


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_hand_written_muse_corpus(tmp_path: Path) -> None:
    """Files as the challenge ships them: numeric ids, features every 250 ms, labels every 500 ms with a gap."""
    root = tmp_path / "muse"
    _write(root / "metadata" / "partition.csv", "Id,Partition\n7,train\n12,devel\n31,test\n")
    for video_id in ("7", "12", "31"):
        rows = "".join(f"{250 * i},{1 + i // 8},{i * 0.5:.1f},{-i:.0f}\n" for i in range(16))
        _write(root / "feature_segments" / "egemaps" / f"{video_id}.csv", "timestamp,segment_id,F0,loudness\n" + rows)
        rows = "".join(f"{250 * i},{1 + i // 8},{i}\n" for i in range(16))
        _write(root / "feature_segments" / "vggface2" / f"{video_id}.csv", "timestamp,segment_id,v0\n" + rows)
    labels = "timestamp,value,segment_id\n0,0.1,1\n500,0.2,1\n1000,0.3,1\n2500,0.6,2\n3000,0.5,2\n"
    for video_id in ("7", "12"):
        _write(root / "label_segments" / "arousal" / f"{video_id}.csv", labels)
    _write(root / "label_segments" / "physio-arousal" / "7.csv", labels)
    corpus = read_source(str(root), "muse")
    assert [(v.video_id, v.split) for v in corpus.videos] == [("7", "train"), ("12", "dev"), ("31", "test")]
    assert corpus.fps == 4.0 and corpus.feature_set == "egemaps+vggface2"
    assert corpus.feature_names == ["F0", "loudness", "v0"]
    video = corpus.videos[0]
    np.testing.assert_allclose(video.time_s, np.arange(16) * 0.25)
    np.testing.assert_array_equal(video.features[:3], [[0.0, 0.0, 0.0], [0.5, -1.0, 1.0], [1.0, -2.0, 2.0]])
    # 0.25 s lies between two samples 0.5 s apart; 1.25-2.25 s in the labels' gap; after 3.25 s none
    expected = [0.1, 0.15, 0.2, 0.25, 0.3] + [np.nan] * 5 + [0.6, 0.55, 0.5, 0.5] + [np.nan] * 2
    np.testing.assert_allclose(video.arousal, expected, rtol=1e-6)
    assert video.valence is None and corpus.videos[2].arousal is None
    assert json.loads(corpus.metadata["notes"]) == ["skipped label folders not read by the muse layout: physio-arousal"]
    result = ingest(str(root), str(tmp_path / "dataset"), layout="muse", progress=False)
    assert result.notes and read_corpus(str(tmp_path / "dataset")).videos[0].video_id == "7"


def test_written_and_read_back_with_labels_at_their_own_rate(tmp_path: Path) -> None:
    config = SynthConfig(videos_per_split=1, frames=160, fps=4.0, appearance_dim=3, geometric_dim=2, lag_s=1.0)
    corpus = write_corpus(config, tmp_path / "muse", "muse", options=WriteOptions(label_fps=2.0))
    partition = (tmp_path / "muse" / "metadata" / "partition.csv").read_text().splitlines()
    assert partition == ["Id,Partition", "train_1,train", "dev_1,devel", "test_1,test"]
    header = (tmp_path / "muse" / "feature_segments" / "appearance" / "train_1.csv").read_text().splitlines()[:2]
    assert header[0] == "timestamp,segment_id,appearance_0,appearance_1,appearance_2"
    assert header[1].startswith("0,1,")
    read = read_source(str(tmp_path / "muse"), "muse")
    assert read.fps == 4.0 and read.feature_set == "appearance+geometric"
    for original, video in zip(corpus.videos, read.videos, strict=True):
        np.testing.assert_array_equal(video.features, original.features)
        if original.labelled:
            # labels every other frame: exact on those, interpolated between
            np.testing.assert_array_equal(video.arousal[::2], original.arousal[::2])
            midpoints = (original.arousal[0:-2:2] + original.arousal[2::2]) / 2
            np.testing.assert_allclose(video.arousal[1:-1:2], midpoints, atol=1e-6)
            assert video.arousal[-1] == original.arousal[-2]  # half a label step after the last one: nearest


def test_a_non_integer_frame_rate_with_millisecond_timestamps(tmp_path: Path) -> None:
    """SEMAINE's 49.979 fps: timestamps printed to the millisecond, frames and rate recovered."""
    config = SynthConfig(videos_per_split=1, frames=3000, fps=49.979, appearance_dim=2, geometric_dim=1, lag_s=0.5)
    corpus = write_corpus(config, tmp_path / "muse", "muse")
    read = read_source(str(tmp_path / "muse"), "muse")
    assert read.fps == pytest.approx(49.979, abs=1e-3)
    video = read.videos[0]
    assert video.num_frames == 3000
    np.testing.assert_allclose(video.time_s, corpus.videos[0].time_s, atol=5e-4)
    np.testing.assert_array_equal(video.arousal, corpus.videos[0].arousal)


def test_partition_names_outside_train_devel_test_are_refused(tmp_path: Path) -> None:
    write_corpus(SynthConfig(videos_per_split=1, frames=40, fps=4.0, lag_s=0.5), tmp_path / "m", "muse")
    path = tmp_path / "m" / "metadata" / "partition.csv"
    path.write_text(path.read_text().replace("devel", "validation"))
    with pytest.raises(AffectError, match=r"partition.csv: line 3: unknown partition 'validation'"):
        read_source(str(tmp_path / "m"), "muse")


@pytest.mark.slow
def test_a_planted_lag_is_learned_from_the_muse_layout(tmp_path: Path) -> None:
    fps = 25.0
    write_corpus(learning_config(fps), tmp_path / "src", "muse", options=WriteOptions(label_fps=5.0))
    train_and_check(tmp_path / "src", "muse", tmp_path, lag_frames=LAG_S * fps)
