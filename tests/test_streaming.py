"""Chunked prediction equals whole-video prediction for every variant, chunk size and feature transform."""

import numpy as np
import pytest
import torch

from affect_core.alignment import lagged_convolution
from affect_core.config import FeatureConfig, ModelConfig
from affect_core.features import fit_feature_transform
from affect_core.inference import predict_features
from affect_core.model import AffectModel
from affect_core.streaming import StreamingLaggedConvolution, iter_chunks, stream_predict


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 5))
    x[100:150] = np.nan
    x[690:] = np.nan  # the video ends without a face
    return x


@pytest.mark.parametrize(
    "model,align,pooling",
    [
        ("lstm-kf", "adaptive", 0),
        ("lstm-ekf", "manual", 20),
        ("baseline", "adaptive", 7),
        ("baseline", "none", 0),
        ("lstm-kf", "none", 10),
        ("lstm-ekf", "adaptive", 0),
    ],
)
@pytest.mark.parametrize("chunk", [3, 64, 5000])
def test_chunked_equals_whole(features, model, align, pooling, chunk):
    torch.manual_seed(0)
    transform = fit_feature_transform([features], FeatureConfig(pooling_window=pooling))
    config = ModelConfig(
        model=model, align=align, input_dim=transform.output_dim, window=30, manual_shift=-12, mu_init_frames=9
    )
    m = AffectModel(config)
    whole = predict_features(m, transform, features)
    parts = list(stream_predict(m, transform, iter_chunks(features, chunk)))
    levels = np.concatenate([p[0] for p in parts])
    variances = np.concatenate([p[1] for p in parts])
    assert levels.shape == whole.levels.shape
    assert np.allclose(levels, whole.levels, atol=1e-5)
    assert np.allclose(variances, whole.variances, atol=1e-5, equal_nan=True)
    chunked = predict_features(m, transform, features, chunk_frames=chunk)
    assert np.allclose(chunked.levels, whole.levels, atol=1e-5)


@pytest.mark.parametrize("pieces", [[1] * 30, [5, 20, 5], [30], [2, 0, 28]])
def test_streaming_convolution_equals_lagged_convolution(pieces):
    torch.manual_seed(1)
    z = torch.randn(30, 3, dtype=torch.float64)
    w = torch.softmax(torch.randn(11, dtype=torch.float64), 0)  # D = 5, longer than some pieces
    conv = StreamingLaggedConvolution(w)
    outputs, start = [], 0
    for size in pieces:
        outputs.append(conv.push(z[start : start + size]))
        start += size
    outputs.append(conv.finish())
    got = torch.cat([o for o in outputs if o.numel()])
    assert torch.allclose(got, lagged_convolution(z.unsqueeze(0), w)[0], atol=1e-12)


def test_a_long_video_streams_with_the_same_result():
    """20,000 frames in chunks of 3,000: the LSTM and filter states carry across chunks."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20_000, 4)).astype(np.float32)
    x[5_000:5_200] = np.nan
    torch.manual_seed(0)
    m = AffectModel(ModelConfig(model="lstm-kf", align="adaptive", input_dim=4, mu_init_frames=40))
    whole = predict_features(m, None, x)
    chunked = predict_features(m, None, x, chunk_frames=3_000)
    assert np.allclose(chunked.levels, whole.levels, atol=1e-5)
    assert np.allclose(chunked.variances, whole.variances, atol=1e-5)


@pytest.mark.parametrize("pieces", [[1] * 40, [7, 26, 7], [40]])
def test_streaming_convolution_leaves_non_finite_values_out_as_lagged_convolution_does(pieces):
    torch.manual_seed(2)
    z = torch.randn(40, 2, dtype=torch.float64)
    z[3, 0], z[20:31, 1], z[39, 0] = float("nan"), float("inf"), float("-inf")
    w = torch.softmax(torch.randn(7, dtype=torch.float64), 0)  # D = 3: frames 23..27 of channel 1 see only inf
    conv = StreamingLaggedConvolution(w)
    outputs, start = [], 0
    for size in pieces:
        outputs.append(conv.push(z[start : start + size]))
        start += size
    outputs.append(conv.finish())
    got, whole = torch.cat([o for o in outputs if o.numel()]), lagged_convolution(z.unsqueeze(0), w)[0]
    assert torch.isnan(whole[23:28, 1]).all() and torch.isfinite(whole[:23]).all() and torch.isfinite(whole[28:]).all()
    torch.testing.assert_close(got, whole, atol=1e-12, rtol=0, equal_nan=True)


def test_a_state_gone_non_finite_is_an_error_naming_the_video_and_frame_in_streaming_and_batches(monkeypatch):
    """Scoring never writes what a diverged filter gives: a state that is not finite is an AffectError naming the
    video and the frame, counted from the video's start across chunks."""
    from affect_core.errors import AffectError
    from affect_core.inference import predict_batch

    torch.manual_seed(0)
    m = AffectModel(ModelConfig(model="lstm-kf", align="adaptive", input_dim=4, window=10))
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    original = AffectModel.causal
    seen = {"frames": 0}

    def causal(self, inputs, **kwargs):
        out = original(self, inputs, **kwargs)
        z = out.states[0]
        start, seen["frames"] = seen["frames"], seen["frames"] + z.shape[1]
        if start <= 130 < start + z.shape[1]:  # frame 130 of the first video given
            z[0, 130 - start, 1] = float("inf")
        return out

    monkeypatch.setattr(AffectModel, "causal", causal)
    with pytest.raises(AffectError, match="'clip_7': the model's state is not finite .* from frame 130 on"):
        list(stream_predict(m, None, iter_chunks(x, 50), name="video 'clip_7'"))
    seen["frames"] = 0
    with pytest.raises(AffectError, match="video 'clip_7': .* from frame 130 on"):
        predict_batch(m, None, [x, x[:200]], names=["clip_7", "clip_8"])
    seen["frames"] = 0
    with pytest.raises(AffectError, match="video 'clip_7': .* from frame 130 on"):
        predict_batch(m, None, [x], chunk_frames=64, names=["clip_7"])
