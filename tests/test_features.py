"""Feature transform: fitted on train only, NaN frames preserved, PCA share, window pooling, serialisation."""

import numpy as np
import pytest

from affect_core.config import FeatureConfig
from affect_core.errors import AffectError
from affect_core.features import FeatureTransform, fit_feature_transform, window_mean_std


def test_standardisation_uses_frames_with_a_face_only():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=3.0, scale=2.0, size=(1000, 4))
    x[::10] = np.nan
    t = fit_feature_transform([x], FeatureConfig())
    y = t.apply(x)
    assert np.isnan(y[::10]).all()
    face = np.isfinite(y).all(1)
    assert np.allclose(y[face].mean(0), 0, atol=1e-5) and np.allclose(y[face].std(0), 1, atol=1e-4)


def test_pca_keeps_the_requested_variance_share():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(2000, 2))
    x = latent @ rng.normal(size=(2, 10)) + 0.01 * rng.normal(size=(2000, 10))
    t = fit_feature_transform([x], FeatureConfig(pca_share=0.99))
    assert t.output_dim == 2


def test_pooling_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 3))
    x[5:8] = np.nan
    pooled = window_mean_std(x, 6)
    for t in (0, 10, 25, 49):
        lo, hi = max(t - 3, 0), min(t + 3, 50)
        rows = x[lo:hi][np.isfinite(x[lo:hi]).all(1)]
        assert np.allclose(pooled[t], np.concatenate([rows.mean(0), rows.std(0)]))
    assert np.isnan(window_mean_std(np.full((5, 2), np.nan), 2)).all()


def test_round_trip_through_arrays_applies_identically():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6))
    t = fit_feature_transform([x], FeatureConfig(pca_share=0.9, pooling_window=20))
    again = FeatureTransform.from_arrays(t.to_arrays())
    assert np.array_equal(t.apply(x), again.apply(x), equal_nan=True)


def test_wrong_width_and_empty_train_are_clear_errors():
    t = fit_feature_transform([np.ones((10, 3)) * np.arange(10)[:, None]], FeatureConfig())
    with pytest.raises(AffectError, match=r"expected features of shape \(frames, 3\)"):
        t.apply(np.zeros((5, 4)))
    with pytest.raises(AffectError, match="no videos"):
        fit_feature_transform([], FeatureConfig())
    with pytest.raises(AffectError, match="fewer than 2 frames with a face"):
        fit_feature_transform([np.full((5, 3), np.nan)], FeatureConfig())
