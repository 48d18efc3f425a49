"""The avec2016 layout as the AVEC2016 release ships RECOLA: per-dimension feature folders, optional
Instance_name, zeros for frames without a face, per-rater ratings, other folders skipped; the flat variant still
read; a model of one dimension reads that dimension's features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from corpus_checks import assert_same_corpus
from layout_learning import LAG_S, learning_config, train_and_check

from affect_core.config import FeatureConfig
from affect_core.data.dataset import dataset_info, ingest, read_corpus
from affect_core.data.readers import read_source
from affect_core.errors import AffectError
from affect_core.features import fit_feature_transform
from affect_core.synth import SynthConfig, WriteOptions, write_corpus

DATA = Path(__file__).parent / "data"
TINY = SynthConfig(videos_per_split=1, frames=120, appearance_dim=4, geometric_dim=6, raters=3, lag_s=0.4)


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, object]:
    corpus = write_corpus(TINY, tmp_path / "release", "avec2016")
    return tmp_path / "release", corpus


def test_release_layout_keeps_each_dimensions_version_of_every_set(release) -> None:
    root, generated = release
    corpus = read_source(str(root), "avec2016")
    sets = json.loads(corpus.metadata["feature_sets"])
    assert [(s["name"], s["set"], s["dimension"], s["stop"] - s["start"]) for s in sets] == [
        ("arousal/appearance", "appearance", "arousal", 4),
        ("arousal/geometric", "geometric", "arousal", 6),
        ("valence/appearance", "appearance", "valence", 4),
        ("valence/geometric", "geometric", "valence", 6),
    ]
    assert corpus.feature_set == "appearance+geometric" and corpus.feature_dim == 20
    assert corpus.feature_names[0] == "arousal/appearance:appearance_0"
    assert corpus.metadata["pooled"] == "true" and corpus.metadata["source_format"] == "avec2016-release"
    for original, video in zip(generated.videos, corpus.videos, strict=True):
        # zeros in the files are frames without a face again
        np.testing.assert_array_equal(video.features[:, :10], original.features)
        np.testing.assert_array_equal(video.features[:, 10:], original.features)
        np.testing.assert_array_equal(video.arousal if video.labelled else None, original.arousal)
    assert corpus.dimension_columns(("arousal",)) == list(range(10))
    assert corpus.dimension_columns(("valence",)) == list(range(10, 20))
    assert corpus.dimension_columns(("valence", "arousal")) == list(range(20))  # the joint variant: both
    only = read_source(str(root), "avec2016", feature_set="geometric")
    assert [s["name"] for s in json.loads(only.metadata["feature_sets"])] == ["arousal/geometric", "valence/geometric"]


def test_per_rater_ratings_are_read_and_kept_in_the_dataset(release, tmp_path: Path) -> None:
    root, generated = release
    header = (root / "ratings_individual_centred" / "arousal" / "train_1.csv").read_text().splitlines()[0]
    assert header == "time;R1 ;R2 ;R3 "  # the release's trailing spaces
    corpus = read_source(str(root), "avec2016")
    video, original = corpus.videos[0], generated.videos[0]
    assert sorted(video.ratings) == sorted(original.ratings) and len(video.ratings) == 6
    for name, trace in original.ratings.items():
        np.testing.assert_array_equal(video.ratings[name], trace)
    assert corpus.videos[-1].ratings is None  # test videos: no labels, no ratings
    ingest(str(root), str(tmp_path / "dataset"), layout="avec2016", progress=False)
    back = read_corpus(str(tmp_path / "dataset"))
    assert_same_corpus(back, corpus)
    for name, trace in original.ratings.items():
        np.testing.assert_array_equal(back.videos[0].ratings[name], trace)
    source = {v.video_id: v for v in corpus.videos}
    for video in back.videos:  # every video of a row group gets its own rows' ratings
        expected = source[video.video_id].ratings
        assert (video.ratings is None) == (expected is None) and sorted(video.ratings or {}) == sorted(expected or {})
        for name, trace in (expected or {}).items():
            np.testing.assert_array_equal(video.ratings[name], trace)
    assert back.dimension_columns(("arousal",)) == list(range(10))
    assert back.metadata["pooled"] == "true"
    info = dataset_info(str(tmp_path / "dataset"))
    assert info.metadata["affect.pooled"] == "true" and json.loads(info.metadata["affect.ratings"])[0] == "arousal/R1"
    assert list(info.feature_sets) == [
        "arousal/appearance",
        "arousal/geometric",
        "valence/appearance",
        "valence/geometric",
    ]
    appearance = read_corpus(str(tmp_path / "dataset"), feature_set="appearance")
    assert appearance.feature_dim == 8 and appearance.dimension_columns(("valence",)) == [4, 5, 6, 7]


def test_instance_name_is_optional_and_must_name_the_video(release) -> None:
    root, _ = release
    path = root / "features_video_appearance" / "valence" / "dev_1.arff"
    text = path.read_text()
    without = text.replace("@attribute Instance_name string\n", "").replace("dev_1,", "")
    path.write_text(without)
    corpus = read_source(str(root), "avec2016")
    assert corpus.videos[1].video_id == "dev_1"
    lines = text.splitlines()
    row = lines.index("@data") + 3
    lines[row] = lines[row].replace("dev_1,", "dev_2,", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AffectError, match=rf"valence/dev_1.arff: line {row + 1}, attribute 'Instance_name': 'dev_2'"):
        read_source(str(root), "avec2016")


def test_other_release_folders_are_skipped_with_one_line(release, tmp_path: Path) -> None:
    root, _ = release
    (root / "recordings_video").mkdir()
    (root / "recordings_video" / "train_1.mp4").write_bytes(b"\x00")
    (root / "recordings_audio").mkdir()
    result = ingest(str(root), str(tmp_path / "dataset"), layout="avec2016", progress=False)
    assert result.notes == ["skipped folders not read by the avec2016 layout: recordings_audio, recordings_video"]


def test_the_flat_layout_is_still_accepted_and_the_same_data(tmp_path: Path) -> None:
    write_corpus(TINY, tmp_path / "flat", "avec2016", options=WriteOptions(flat=True))
    flat = read_source(str(tmp_path / "flat"), "avec2016")
    release = read_source(str(write_corpus(TINY, tmp_path / "rel", "avec2016") and tmp_path / "rel"), "avec2016")
    assert flat.metadata["source_format"] == "avec2016-flat" and flat.dimension_columns(("arousal",)) is None
    for a, b in zip(flat.videos, release.videos, strict=True):
        np.testing.assert_array_equal(a.features, b.features[:, : flat.feature_dim])
    fixture = read_source(str(DATA / "avec2016"), "avec2016")
    assert fixture.feature_set == "appearance+geometric"


def test_a_flat_folder_among_per_dimension_ones_is_refused(release) -> None:
    root, _ = release
    flat = root / "features_video_geometric"
    shutil.rmtree(flat / "valence")
    for path in (flat / "arousal").iterdir():
        path.rename(flat / path.name)
    (flat / "arousal").rmdir()
    with pytest.raises(AffectError, match=r"features_video_geometric: \*.arff directly in the folder"):
        read_source(str(root), "avec2016")


def test_the_documented_path_gives_the_papers_input_widths(tmp_path: Path) -> None:
    """168 appearance (84 PCA components, mean and std) and 632 geometric attributes reach the model unchanged:
    no PCA and no pooling by default, each dimension's model reading its own version."""
    config = SynthConfig(
        videos_per_split=1, frames=50, appearance_dim=168, geometric_dim=632, no_face_share=0.0, lag_s=0.4
    )
    write_corpus(config, tmp_path / "release", "avec2016")
    ingest(str(tmp_path / "release"), str(tmp_path / "dataset"), layout="avec2016", progress=False)
    for feature_set, width in (("appearance", 168), ("geometric", 632)):
        corpus = read_corpus(str(tmp_path / "dataset"), feature_set=feature_set)
        assert corpus.feature_dim == 2 * width
        features = FeatureConfig()
        assert features.pooling_window == 0 and features.pca_share == 0.0
        features.columns = corpus.dimension_columns(("arousal",))
        transform = fit_feature_transform([v.features for v in corpus.split("train")], features)
        assert transform.output_dim == width
        video = corpus.split("dev")[0]
        np.testing.assert_allclose(
            transform.apply(video.features), (video.features[:, :width] - transform.mean) / transform.scale, rtol=1e-5
        )


@pytest.mark.slow
def test_a_planted_lag_is_learned_from_the_release_layout(tmp_path: Path) -> None:
    fps = 25.0
    write_corpus(learning_config(fps, raters=2), tmp_path / "src", "avec2016")
    model = train_and_check(tmp_path / "src", "avec2016", tmp_path, lag_frames=LAG_S * fps)
    assert model.transform.columns.tolist() == list(range(50))  # the arousal model read arousal's 20 + 30 columns


@pytest.mark.parametrize("feature_set", ["appearance", None])
def test_a_model_of_one_set_or_of_all_scores_the_whole_release_dataset(release, tmp_path: Path, feature_set) -> None:
    """Trained on `--feature-set appearance` (both dimensions' versions) or on every set, a model scores the dataset
    as ingested: the scorer selects what the model was trained on, in the order training saw it."""
    from affect_core.config import ModelConfig, RunConfig, TrainConfig
    from affect_core.experiment import train_run
    from affect_core.scoring import read_predictions, score_dataset

    root, _ = release
    dataset = str(tmp_path / "dataset")
    ingest(str(root), dataset, layout="avec2016", progress=False)
    config = RunConfig(model=ModelConfig(model="lstm-kf", align="none"), train=TrainConfig(max_epochs=1))
    corpus = read_corpus(dataset, feature_set=feature_set)
    outputs = train_run(corpus, str(tmp_path / "run"), config, dimension="arousal", seeds=1, progress=False)
    result = score_dataset(dataset, outputs["model"], str(tmp_path / "predictions"), progress=False)
    frames = sum(v.num_frames for v in read_corpus(dataset).videos)
    assert result.frames == frames
    predictions = read_predictions(str(tmp_path / "predictions"))
    assert all(np.isfinite(predictions[v].column("arousal").to_numpy()).all() for v in predictions)
