"""Model bundles: save/load round trip predicts identically; loading never unpickles; mismatches are refused."""

import json
import os
import pickle
from dataclasses import replace

import numpy as np
import pytest

from affect_core.artifact import ModelBundle, TrainedModel, load_bundle, save_bundle
from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.errors import AffectError
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import train_model


@pytest.fixture(scope="module")
def bundle():
    corpus = generate_corpus(SynthConfig(videos_per_split=1, frames=200, appearance_dim=4, geometric_dim=3, seed=5))
    config = RunConfig(
        model=ModelConfig(model="lstm-ekf", window=10), train=TrainConfig(max_epochs=1, window_frames=100)
    )
    result = train_model(corpus.split("train"), corpus.split("dev"), config, progress=False)
    trained = TrainedModel("arousal", result.model, result.transform, result.config, result.metrics)
    return ModelBundle([trained], corpus.feature_names, corpus.feature_set, corpus.fps), corpus


def test_round_trip_predicts_identically(bundle, tmp_path):
    b, corpus = bundle
    save_bundle(b, str(tmp_path / "m"))
    loaded = load_bundle(str(tmp_path / "m"))
    features = corpus.split("dev")[0].features
    before, after = b.predict(features), loaded.predict(features)
    assert np.array_equal(before["arousal"][0], after["arousal"][0])
    assert np.array_equal(before["arousal"][1], after["arousal"][1])
    assert loaded.feature_names == corpus.feature_names and loaded.dimensions == ("arousal",)


def test_round_trip_on_memory_store(bundle):
    b, corpus = bundle
    save_bundle(b, "memory://bundles/m1")
    assert load_bundle("memory://bundles/m1").model_id == b.model_id


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/affect-pwned",))


def test_a_planted_pickle_is_refused_and_never_executed(bundle, tmp_path):
    b, _ = bundle
    target = tmp_path / "m"
    save_bundle(b, str(target))
    (target / "arousal.safetensors").write_bytes(pickle.dumps({"model.x": Exploit()}))
    if os.path.exists("/tmp/affect-pwned"):
        os.unlink("/tmp/affect-pwned")
    with pytest.raises(AffectError, match="not a safetensors weights file"):
        load_bundle(str(target))
    assert not os.path.exists("/tmp/affect-pwned")


def test_weights_that_do_not_fit_the_config_are_refused(bundle, tmp_path):
    b, _ = bundle
    target = tmp_path / "m"
    save_bundle(b, str(target))
    manifest = json.loads((target / "bundle.json").read_text())
    manifest["models"][0]["config"]["model"]["lstm_size"] = 7
    (target / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(AffectError, match="weights do not fit the model config"):
        load_bundle(str(target))


def test_missing_or_foreign_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(AffectError, match="bundle.json missing"):
        load_bundle(str(tmp_path))
    (tmp_path / "bundle.json").write_text('{"format": "something-else"}')
    with pytest.raises(AffectError, match="format is not"):
        load_bundle(str(tmp_path))


def test_features_of_another_width_are_refused(bundle):
    b, _ = bundle
    with pytest.raises(AffectError, match="expects 7 features"):
        b.predict(np.zeros((10, 5), dtype=np.float32))


def calibrated(b, scale=3.0, noise=0.02):
    from affect_core.calibration import Calibration

    trained = b.models[0]
    calibration = {d: Calibration(scale, noise, 100, "dev", 0.5, 0.9) for d in trained.dimensions}
    return ModelBundle([replace(trained, calibration=calibration)], b.feature_names, b.feature_set, b.fps)


def test_a_calibration_is_kept_and_applied_to_every_prediction(bundle, tmp_path):
    b, corpus = bundle
    save_bundle(calibrated(b), str(tmp_path / "m"))
    loaded = load_bundle(str(tmp_path / "m"))
    assert loaded.calibrated and not b.calibrated
    assert loaded.models[0].calibration == calibrated(b).models[0].calibration
    assert loaded.model_id == calibrated(b).model_id != b.model_id  # the calibration is part of what scored
    features = corpus.split("dev")[0].features
    level, state_variance = b.predict(features)["arousal"]
    got_level, got_variance = loaded.predict(features)["arousal"]
    assert np.array_equal(level, got_level)
    assert got_variance == pytest.approx(3.0 * state_variance + 0.02, rel=1e-6)
    # the batched scorer applies it too
    from affect_core.scoring import predict_tracks

    (tracks,) = predict_tracks(loaded, [features])
    assert np.array_equal(tracks["arousal"][1], got_variance)


def test_a_bundle_from_before_calibration_loads_scores_and_says_so(bundle, tmp_path):
    from affect_core.scoring import score_videos

    b, corpus = bundle
    save_bundle(b, str(tmp_path / "old"))
    manifest = json.loads((tmp_path / "old" / "bundle.json").read_text())
    assert all("calibration" not in m for m in manifest["models"])  # the layout bundles had before calibration
    old = load_bundle(str(tmp_path / "old"))
    assert not old.calibrated and old.model_id == b.model_id
    videos = corpus.split("dev")
    result = score_videos(old, videos, str(tmp_path / "p"), feature_names=corpus.feature_names, progress=False)
    assert result.calibrated is False
    save_bundle(calibrated(b), str(tmp_path / "new"))
    new = load_bundle(str(tmp_path / "new"))
    result = score_videos(new, videos, str(tmp_path / "q"), feature_names=corpus.feature_names, progress=False)
    assert result.calibrated is True


@pytest.mark.parametrize(
    "calibration", [{"arousal": {"scale": -1.0, "noise": 0.0}}, {"arousal": {"noise": 0.1}}, [1.0, 2.0]]
)
def test_a_calibration_that_makes_no_sense_is_refused(bundle, tmp_path, calibration):
    b, _ = bundle
    save_bundle(b, str(tmp_path / "m"))
    manifest = json.loads((tmp_path / "m" / "bundle.json").read_text())
    manifest["models"][0]["calibration"] = calibration
    (tmp_path / "m" / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(AffectError, match="bundle.json.*calibration"):
        load_bundle(str(tmp_path / "m"))
