"""Calibrated uncertainty: the fit recovers a planted variance model, the bundle keeps it, every scoring path applies
it, and on held-out labels the calibrated 50% and 90% intervals hold 50% and 90% of them (an uncalibrated bundle's do
not)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from affect_core.artifact import load_bundle, save_bundle
from affect_core.calibration import (
    Calibration,
    fit_calibration,
    gaussian_nll,
    interval_coverage,
    interval_z,
)
from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.experiment import finish_run, plan_seed_tasks, run_seeds
from affect_core.scoring import evaluate_predictions, evaluation_markdown, predict_tracks, prediction_rows
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, generate_corpus


def test_interval_half_widths_are_the_gaussian_quantiles():
    assert interval_z(0.5) == pytest.approx(0.6745, abs=1e-4)
    assert interval_z(0.9) == pytest.approx(1.6449, abs=1e-4)
    with pytest.raises(AffectError):
        interval_z(1.0)


def test_fit_recovers_a_planted_scale_and_noise():
    rng = np.random.default_rng(0)
    v = rng.lognormal(-4.0, 1.0, 40_000)
    a, b = 2.0, 0.01
    r = rng.standard_normal(v.size) * np.sqrt(a * v + b)
    fitted = fit_calibration(v, r)
    assert fitted.scale == pytest.approx(a, rel=0.1) and fitted.noise == pytest.approx(b, rel=0.1)
    assert fitted.frames == v.size and abs(fitted.coverage50 - 0.5) < 0.01 and abs(fitted.coverage90 - 0.9) < 0.01
    # the fitted variance is a * v + b, applied frame by frame (float32 in, float32 out)
    applied = fitted.apply(np.array([0.0, 0.1], np.float32))
    assert applied.dtype == np.float32
    assert applied == pytest.approx([fitted.noise, fitted.scale * 0.1 + fitted.noise], rel=1e-6)


def test_a_variance_that_says_nothing_gets_scale_zero():
    rng = np.random.default_rng(1)
    v = rng.lognormal(-4.0, 1.0, 20_000)
    r = rng.standard_normal(v.size) * 0.2  # residuals independent of the state variance
    fitted = fit_calibration(v, r)
    assert fitted.scale * v.mean() < 0.05 * fitted.noise
    assert fitted.noise == pytest.approx(0.04, rel=0.05)


def test_a_constant_state_variance_is_kept_and_the_rest_is_annotation_noise():
    rng = np.random.default_rng(2)
    r = rng.standard_normal(20_000) * 0.3
    v = np.full(r.size, 0.01)
    fitted = fit_calibration(v, r)
    total = fitted.scale * 0.01 + fitted.noise
    assert total == pytest.approx(0.09, rel=0.05)
    assert fitted.scale == pytest.approx(1.0, rel=0.05)  # the level may move a little towards the intervals
    # a filter more uncertain than its errors: its variance is shrunk, no annotation noise
    shrunk = fit_calibration(np.full(r.size, 1.0), r)
    assert shrunk.noise == 0.0 and shrunk.scale == pytest.approx(0.09, rel=0.05)


def test_a_model_without_a_filter_gets_a_constant_variance():
    r = np.random.default_rng(3).standard_normal(10_000) * 0.25
    fitted = fit_calibration(np.full(r.size, np.nan), r)
    assert fitted.scale == 0.0 and fitted.noise == pytest.approx(0.0625, rel=0.05)
    assert fitted.apply(np.full(3, np.nan)) == pytest.approx([fitted.noise] * 3)


def test_the_fit_refuses_what_it_cannot_use():
    with pytest.raises(AffectError, match="no labelled dev frame"):
        fit_calibration(np.ones(3), np.full(3, np.nan))
    with pytest.raises(AffectError, match="frame 1"):
        fit_calibration(np.array([0.1, np.inf, 0.1]), np.zeros(3))
    with pytest.raises(AffectError, match="3 state variances for 2 residuals"):
        fit_calibration(np.ones(3), np.zeros(2))


def test_serialisation_round_trips_and_refuses_nonsense():
    c = Calibration(0.5, 0.02, 100, "dev", 0.49, 0.91)
    assert Calibration.from_dict(c.to_dict()) == c
    assert Calibration.from_dict({"scale": 1, "noise": 0}).split == "dev"
    for bad in (
        {"scale": -1, "noise": 0},
        {"scale": 1},
        {"scale": "x", "noise": 0},
        [1, 2],
        {"scale": math.nan, "noise": 0},
    ):
        with pytest.raises(AffectError, match="bundle.json"):
            Calibration.from_dict(bad, where="bundle.json")


def test_without_a_face_the_variance_ramps_to_the_labels_spread():
    """Between the filter's settled variance (frames with a face) and the one a faceless stretch settles at, the
    variance moves from the fitted line to the labels' spread around the fallback level (never below a frame with a
    face's), in proportion; unchanged on frames with a face."""
    c = Calibration(0.0, 0.02, 10, "dev", 0.5, 0.9, settled=0.01, faceless=0.11, spread=0.3)  # a = 0: no gaps seen
    v = np.array([0.01, 0.035, 0.06, 0.11, 0.5, 0.005])
    np.testing.assert_allclose(c.apply(v), [0.02, 0.09, 0.16, 0.3, 0.3, 0.02], rtol=1e-6)
    wide = Calibration(4.0, 0.0, settled=0.01, faceless=0.11, spread=0.1)  # the line, carried on, would be wider
    np.testing.assert_allclose(wide.apply(v), [0.04, 0.13, 0.17, 0.1, 0.1, 0.02], rtol=1e-6)
    narrow = Calibration(1.0, 0.3, settled=0.01, faceless=0.11, spread=0.05)  # labels nearer the mean than the
    np.testing.assert_allclose(narrow.apply(v), [0.31, 0.32875, 0.335, 0.31, 0.31, 0.305], rtol=1e-6)  # errors
    assert Calibration.from_dict(c.to_dict()) == c
    old = {"scale": 0.0, "noise": 0.02}  # written before: the fitted line alone
    assert Calibration.from_dict(old).settled is None
    np.testing.assert_allclose(Calibration.from_dict(old).apply(v), 0.02, rtol=1e-6)
    with pytest.raises(AffectError, match="spread must be a finite number >= 0"):
        Calibration.from_dict({**c.to_dict(), "spread": -1.0})


def test_coverage_and_nll_against_their_definitions():
    prediction = np.array([0.0, 0.0, 0.0, 0.0, 0.5])
    variance = np.array([1.0, 1.0, 1.0, 4.0, np.nan])
    label = np.array([0.5, 1.0, 2.0, -3.0, 0.5])
    covered, counted = interval_coverage(prediction, variance, label)
    # |error| / sd = 0.5, 1.0, 2.0, 1.5: inside 0.674 sd once, inside 1.645 sd three times; the NaN frame not counted
    assert counted == 4 and covered.tolist() == [1, 3]
    total, frames = gaussian_nll(prediction, variance, label)
    expected = sum(0.5 * (math.log(2 * math.pi * s) + e**2 / s) for e, s in [(0.5, 1), (1, 1), (2, 1), (3, 4)])
    assert frames == 4 and total == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------- acceptance
# Annotation noise (label_noise) dominates the residual, as the calibration's model says: the label is the prediction
# plus the filter's uncertainty plus the annotators' noise. 100 videos of 10 s in dev (calibration) and in test
# (held back): 25,000 frames each, about 600 independent stretches of the labels' noise (0.4 s correlation).
HELD_OUT = SynthConfig(
    videos_per_split=100,
    frames=250,
    appearance_dim=6,
    geometric_dim=8,
    seed=1,
    test_labels=True,
    lag_s=0.4,
    feature_noise=0.2,
    subject_offset=0.0,
    regime_amplitude=0.0,
    label_noise=0.25,
    gain=0.5,
)


@pytest.fixture(scope="module")
def calibrated_run():
    """A joint lstm-kf-aa model trained on 8 train videos through the run's own seed path (calibrated on dev where
    the best seed is saved), its bundle, and the held-back test videos."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    corpus = generate_corpus(HELD_OUT)
    corpus = dataclasses.replace(corpus, videos=corpus.split("train")[:8] + corpus.split("dev") + corpus.split("test"))
    config = RunConfig(
        model=ModelConfig(model="lstm-kf", align="adaptive", window=20, q_init=0.1, r_init=1e-3),
        train=TrainConfig(max_epochs=30, window_frames=250, batch_size=8, seed=1, lr=3e-3, patience=100, eval_every=30),
    )
    run = resolve("memory://calibration-acceptance")
    finish_run(run_seeds(plan_seed_tasks(config, "joint", [0]), corpus, run), run, fps=corpus.fps)
    return load_bundle(run.join("model")), corpus.split("test")


def held_out_evaluation(bundle, videos):
    tracks = predict_tracks(bundle, [v.features for v in videos])  # the scoring path
    tables = {v.video_id: prediction_rows([v], [t], bundle.model_id) for v, t in zip(videos, tracks, strict=True)}
    return evaluate_predictions(tables, videos)["test"]


@pytest.mark.slow
def test_calibrated_intervals_hold_their_share_of_held_out_labels(calibrated_run):
    bundle, test = calibrated_run
    assert bundle.calibrated
    calibration = bundle.models[0].calibration
    assert set(calibration) == {"arousal", "valence"} and all(c.frames == 25_000 for c in calibration.values())
    result = held_out_evaluation(bundle, test)
    for dim in ("arousal", "valence"):
        m = result[dim]
        assert m["frames"] == 25_000
        assert abs(m["coverage50"] - 0.5) <= 0.03, (dim, m)
        assert abs(m["coverage90"] - 0.9) <= 0.03, (dim, m)
        assert m["ccc"] > 0.4  # a model that learned something: the intervals are not around a constant


@pytest.mark.slow
def test_a_long_stretch_without_a_face_widens_the_band_to_the_labels_spread(calibrated_run):
    """Dev held only short stretches without a face; scoring meets a 2-minute one: the band widens there to the dev
    labels' spread around the gap step's mean, and stays as fitted on frames with a face."""
    bundle, test = calibrated_run
    calibration = bundle.models[0].calibration
    features = np.concatenate([test[0].features, np.full((3000, test[0].features.shape[1]), np.nan), test[1].features])
    features = features.astype(np.float32)
    track = predict_tracks(bundle, [features])[0]
    face = np.isfinite(features).all(1)
    for dim in ("arousal", "valence"):
        c = calibration[dim]
        assert c.settled is not None and c.faceless > c.settled and c.spread > 0
        level, variance = track[dim]
        deep = variance[250 + 2600 : 250 + 2900]  # late in the stretch: the filter has long lost the face
        seen = c.scale * c.settled + c.noise
        np.testing.assert_allclose(deep, max(c.spread, seen), rtol=0.05)  # the labels' spread, not the line's
        assert deep.min() > 1.2 * np.median(variance[face]), (dim, deep.min(), np.median(variance[face]))
        assert np.all(np.isfinite(level)) and np.all(np.abs(level) <= 1)


@pytest.mark.slow
def test_an_uncalibrated_bundle_misses_and_says_so(calibrated_run, tmp_path):
    bundle, test = calibrated_run
    calibrated = held_out_evaluation(bundle, test)
    trained = bundle.models[0]
    old = dataclasses.replace(bundle, models=[dataclasses.replace(trained, calibration=None)])
    save_bundle(old, str(tmp_path / "old"))
    loaded = load_bundle(str(tmp_path / "old"))  # a bundle from before calibration loads and scores
    assert not loaded.calibrated and loaded.model_id != bundle.model_id
    result = held_out_evaluation(loaded, test)
    for dim in ("arousal", "valence"):
        # the filter's own variance: far too narrow for the labels, and a worse likelihood
        assert result[dim]["coverage90"] < 0.8 and result[dim]["coverage50"] < 0.4, result[dim]
        assert result[dim]["nll"] > calibrated[dim]["nll"] + 0.1
        assert result[dim]["ccc"] == pytest.approx(calibrated[dim]["ccc"])  # levels untouched
    table = evaluation_markdown({"test": result})
    assert "| 50% interval | 90% interval | NLL |" in table
    assert f"{100 * result['arousal']['coverage90']:.1f}%" in table
    assert "misses its coverage by more than 10 points on test arousal" in table
    assert "misses its coverage" not in evaluation_markdown({"test": calibrated})


def test_evaluation_of_predictions_without_a_variance_reads_n_a():
    video_frames = 40
    gold = np.linspace(-0.5, 0.5, video_frames).astype(np.float32)
    video = Video(
        "dev_1", "dev", np.zeros((video_frames, 2), np.float32), np.arange(video_frames) / 25.0, 25.0, gold, gold
    )
    tracks = {d: (gold + 0.1, np.full(video_frames, np.nan, np.float32)) for d in ("arousal", "valence")}
    table = prediction_rows([video], [tracks], "m")
    result = evaluate_predictions({"dev_1": table}, [video])
    assert math.isnan(result["dev"]["arousal"]["coverage50"]) and result["dev"]["arousal"]["frames"] == 0
    assert "| n/a | n/a | n/a |" in evaluation_markdown(result)
    # with a variance: every error is 0.1, so sd 0.1 puts every label inside the 90% interval and none in the 50%
    tracks = {d: (gold + 0.1, np.full(video_frames, 0.01, np.float32)) for d in ("arousal", "valence")}
    result = evaluate_predictions({"dev_1": prediction_rows([video], [tracks], "m")}, [video])["dev"]["valence"]
    assert result["coverage50"] == 0.0 and result["coverage90"] == 1.0 and result["frames"] == video_frames
    assert result["nll"] == pytest.approx(0.5 * (math.log(2 * math.pi * 0.01) + 1.0), rel=1e-4)
    assert isinstance(table, pa.Table)
