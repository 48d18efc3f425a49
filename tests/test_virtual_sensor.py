"""Learned observation noise (the "virtual sensor"): the front-end emits each frame's noise offset u_t and the filter
uses R_t = diag(softplus(r + u_t)) on that frame. Oracles: filterpy and a numpy EKF with per-frame R; the fixed-noise
model for an untrained learned-noise one; the batched scorer for streaming; the CLI from training to evaluation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter as FilterpyKalmanFilter
from typer.testing import CliRunner

from affect_core.config import FeatureConfig, ModelConfig, RunConfig
from affect_core.errors import AffectError
from affect_core.features import fit_feature_transform
from affect_core.filters import ExtendedKalmanFilter, KalmanFilter
from affect_core.frontend import NOISE_RANGE
from affect_core.inference import predict_features
from affect_core.model import AffectModel
from affect_core.streaming import iter_chunks, stream_predict

# ------------------------------------------------------------------------------------------------------------------
# Filters with per-frame R


def random_kf(seed: int, method: str) -> KalmanFilter:
    """A float64 KF with a stable random transition and random H, Q, r (one affect dimension)."""
    gen = torch.Generator().manual_seed(seed)
    kf = KalmanFilter(num_dims=1, method=method, p0=0.7).double()
    n = kf.state_dim
    F = torch.randn(n, n, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        kf.F.copy_(0.95 * F / torch.linalg.eigvals(F).abs().max())
        kf.H.copy_(torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=gen, dtype=torch.float64))
        kf.q.copy_(torch.log(torch.expm1(0.01 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64))))
        kf.r.copy_(torch.log(torch.expm1(0.05 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64))))
        kf.gap_mean.fill_(0.3)
    return kf


def inputs(batch: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Observations (B, T, 3), a mask with a gap and random holes, and offsets in [-3, 3] (B, T, 3), float64."""
    gen = torch.Generator().manual_seed(seed)
    observations = torch.randn(batch, steps, 3, generator=gen, dtype=torch.float64)
    mask = torch.rand(batch, steps, generator=gen) < 0.8
    mask[0, 3:8] = False
    offsets = NOISE_RANGE * torch.tanh(2 * torch.randn(batch, steps, 3, generator=gen, dtype=torch.float64))
    return observations, mask, offsets


def filterpy_per_frame_r(kf: KalmanFilter, observations: np.ndarray, mask: np.ndarray, variances: np.ndarray):
    """filterpy with frame t's R passed to its update; unobserved frames take the gap step (control input c)."""
    Q = kf.noise_covariances(kf.F)[0].detach().numpy()
    G, c = (m.detach().numpy() for m in kf.gap_transition(kf.F))
    n = kf.state_dim
    states, covariances = [], []
    for seq, seq_mask, seq_r in zip(observations, mask, variances, strict=True):
        oracle = FilterpyKalmanFilter(dim_x=n, dim_z=n)
        oracle.x = np.zeros((n, 1))
        oracle.P = kf.P0.double().numpy().copy()
        oracle.F, oracle.H, oracle.Q = kf.F.detach().numpy().copy(), kf.H.detach().numpy().copy(), Q.copy()
        xs, ps = [], []
        for o_t, observed, r_t in zip(seq, seq_mask, seq_r, strict=True):
            if observed:
                oracle.predict()
                oracle.update(o_t.reshape(-1, 1), R=np.diag(r_t))
            else:
                oracle.predict(u=c.reshape(-1, 1), B=np.eye(n), F=G)
            xs.append(oracle.x.ravel().copy())
            ps.append(oracle.P.copy())
        states.append(xs)
        covariances.append(ps)
    return np.array(states), np.array(covariances)


@pytest.mark.parametrize("masked", [True, False])
def test_kf_per_frame_noise_matches_filterpy_on_every_path(masked: bool) -> None:
    observations, mask, offsets = inputs(3, 30, seed=1)
    if not masked:
        mask = torch.ones_like(mask)
    kf = random_kf(2, "reference")
    variances = torch.nn.functional.softplus(kf.r.detach() + offsets)
    expected_states, expected_covariances = filterpy_per_frame_r(
        kf, observations.numpy(), mask.numpy(), variances.numpy()
    )
    for method in ("reference", "scan", "compiled", "auto"):
        kf.method = method
        with torch.no_grad():
            out = kf(observations, mask=mask if masked else None, noise_offset=offsets)
        np.testing.assert_allclose(out.states.numpy(), expected_states, atol=1e-9, rtol=0, err_msg=method)
        np.testing.assert_allclose(out.covariances.numpy(), expected_covariances, atol=1e-9, rtol=0, err_msg=method)
    # the per-frame R is what made the difference: the fixed R gives another result
    kf.method = "reference"
    with torch.no_grad():
        fixed = kf(observations, mask=mask if masked else None)
    assert (fixed.states - out.states).abs().max() > 1e-3


def test_kf_scan_gradients_equal_the_reference_with_per_frame_noise() -> None:
    observations, mask, offsets = inputs(2, 17, seed=3)
    results = []
    for method in ("reference", "scan"):
        kf = random_kf(4, method)
        u = offsets.clone().requires_grad_(True)
        out = kf(observations, mask=mask, noise_offset=u)
        (out.states.square().sum() + out.covariances.diagonal(dim1=-2, dim2=-1).sum()).backward()
        results.append((out.states.detach(), u.grad, {k: p.grad for k, p in kf.named_parameters()}))
    (s_ref, u_ref, g_ref), (s_scan, u_scan, g_scan) = results
    torch.testing.assert_close(s_scan, s_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(u_scan, u_ref, atol=1e-9, rtol=1e-7)
    assert u_ref[mask].abs().max() > 1e-4  # observed frames' offsets steer the result
    assert u_ref[~mask].abs().max() == 0  # an unobserved frame's offset is never read
    for name in g_ref:
        torch.testing.assert_close(g_scan[name], g_ref[name], atol=1e-9, rtol=1e-7, msg=name)


def numpy_ekf_per_frame_r(ekf: ExtendedKalmanFilter, observations, mask, variances):
    """Textbook EKF in numpy (inverse of S, standard covariance update) with frame t's R = diag(variances[t])."""
    W_f, b_f, W_h, b_h = (p.detach().numpy() for p in (ekf.W_f, ekf.b_f, ekf.W_h, ekf.b_h))
    Q = ekf.noise_covariances(ekf.W_f)[0].detach().numpy()
    G, c = (m.detach().numpy() for m in ekf.gap_transition(ekf.W_f))
    n = ekf.state_dim
    z, P = np.zeros(n), ekf.P0.double().numpy().copy()
    states, covariances = [], []
    for o, observed, r in zip(observations, mask, variances, strict=True):
        if observed:
            z_pred = np.tanh(W_f @ z + b_f)
            F = np.diag(1 - z_pred**2) @ W_f
        else:
            z_pred, F = G @ z + c, G
        P_pred = F @ P @ F.T + Q
        h = np.tanh(W_h @ z_pred + b_h)
        H = np.diag(1 - h**2) @ W_h
        if observed:
            K = P_pred @ H.T @ np.linalg.inv(H @ P_pred @ H.T + np.diag(r))
            z, P = z_pred + K @ (o - h), (np.eye(n) - K @ H) @ P_pred
        else:
            z, P = z_pred, P_pred
        states.append(z)
        covariances.append(P)
    return np.array(states), np.array(covariances)


@pytest.mark.parametrize("method", ["reference", "fast"])
def test_ekf_per_frame_noise_matches_a_numpy_ekf(method: str) -> None:
    gen = torch.Generator().manual_seed(5)
    ekf = ExtendedKalmanFilter(num_dims=1, method=method).double()
    with torch.no_grad():
        for parameter in ekf.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=gen, dtype=torch.float64))
    observations, mask, offsets = inputs(2, 25, seed=6)
    with torch.no_grad():
        out = ekf(observations, mask=mask, noise_offset=offsets)
        fixed = ekf(observations, mask=mask)
    variances = ekf.observation_variances(offsets).detach().numpy()
    for b in range(2):
        states, covariances = numpy_ekf_per_frame_r(ekf, observations[b].numpy(), mask[b].numpy(), variances[b])
        np.testing.assert_allclose(out.states[b].numpy(), states, atol=1e-8, rtol=0)
        np.testing.assert_allclose(out.covariances[b].numpy(), covariances, atol=1e-8, rtol=0)
    assert (fixed.states - out.states).abs().max() > 1e-3


def test_noise_offset_shape_is_checked() -> None:
    kf = KalmanFilter()
    with pytest.raises(AffectError, match="noise_offset must have shape"):
        kf(torch.zeros(2, 5, 3), noise_offset=torch.zeros(2, 5, 2))


# ------------------------------------------------------------------------------------------------------------------
# The model


def config(model: str = "lstm-kf", noise: str = "fixed", **kw) -> ModelConfig:
    return ModelConfig(model=model, align="adaptive", input_dim=5, window=10, observation_noise=noise, **kw)


def features(steps: int = 80, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, steps, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[0, 10:25] = float("nan")  # a stretch without a face
    return x


@pytest.mark.parametrize("kind", ["lstm-kf", "lstm-ekf"])
def test_an_untrained_learned_noise_model_is_the_fixed_noise_model(kind: str) -> None:
    """Zero noise rows: same draws, same values, same gradients; the noise rows get a gradient of their own."""
    fixed = AffectModel(config(kind), seeds=[7]).double()
    learned = AffectModel(config(kind, "learned"), seeds=[7]).double()
    m = fixed.state_dim
    assert learned.frontend.head_weight.shape == (1, 2 * m, 16)
    assert torch.equal(learned.frontend.head_weight[:, m:], torch.zeros(1, m, 16))
    assert torch.equal(learned.frontend.head_bias[:, m:], torch.zeros(1, m))
    x = features()
    outs = []
    for model in (fixed, learned):
        out = model(x)
        (out.y[..., 0].sum() + out.y_var.sum()).backward()
        outs.append(out)
    torch.testing.assert_close(outs[1].y, outs[0].y, atol=1e-12, rtol=0)
    torch.testing.assert_close(outs[1].P, outs[0].P, atol=1e-12, rtol=0)
    assert outs[1].observations.shape == outs[0].observations.shape == (2, 80, m)
    grads = dict(learned.named_parameters())
    for name, parameter in fixed.named_parameters():
        grad = grads[name].grad
        if name.startswith("frontend.head_"):
            grad = grad[:, :m]
        torch.testing.assert_close(grad, parameter.grad, atol=1e-10, rtol=1e-7, msg=name)
    noise_rows = grads["frontend.head_weight"].grad[:, m:]
    assert noise_rows.abs().max() > 1e-6 and grads["frontend.head_bias"].grad[:, m:].abs().max() > 1e-6


def test_a_fixed_noise_model_keeps_its_parameters_and_state_dict() -> None:
    model = AffectModel(config(), seeds=[0])
    assert model.frontend.head_weight.shape == (1, 3, 16) and model.frontend.noise_dim == 0
    assert set(model.state_dict()) == set(AffectModel(config("lstm-kf", "learned"), seeds=[0]).state_dict())


def test_learned_noise_makes_the_variance_follow_the_frame() -> None:
    """With noise rows that respond to the input, the state variance changes from frame to frame on a fully observed
    video; with fixed noise it settles to one value."""
    torch.manual_seed(0)
    fixed = AffectModel(config(), seeds=[1]).double()
    learned = AffectModel(config("lstm-kf", "learned"), seeds=[1]).double()
    with torch.no_grad():
        learned.frontend.head_weight[:, 3:] = torch.randn(1, 3, 16, dtype=torch.float64)
    x = torch.randn(1, 200, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        settled_fixed = fixed(x).y_var[0, 100:, 0]
        settled_learned = learned(x).y_var[0, 100:, 0]
    assert settled_fixed.std() < 1e-9 * settled_fixed.mean()
    assert settled_learned.std() > 1e-2 * settled_learned.mean()


def test_learned_noise_needs_a_filter() -> None:
    with pytest.raises(AffectError, match="observation_noise"):
        ModelConfig(model="baseline", observation_noise="learned")
    with pytest.raises(AffectError, match="observation_noise must be one of fixed, learned"):
        ModelConfig(observation_noise="per-frame")


def test_a_config_without_the_field_reads_as_fixed_noise() -> None:
    data = dataclasses.asdict(RunConfig(model=ModelConfig(model="lstm-kf", observation_noise="learned")))
    del data["model"]["observation_noise"]
    assert RunConfig.from_dict(data).model.observation_noise == "fixed"


@pytest.mark.parametrize("kind", ["lstm-kf", "lstm-ekf"])
def test_streaming_equals_batched_scoring_with_learned_noise(kind: str) -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(300, 5))
    raw[40:70] = np.nan
    transform = fit_feature_transform([raw], FeatureConfig())
    torch.manual_seed(0)
    model = AffectModel(ModelConfig(model=kind, align="adaptive", input_dim=5, window=20, observation_noise="learned"))
    with torch.no_grad():
        model.frontend.head_weight[:, 3:] = 0.5 * torch.randn(1, 3, 16)
    whole = predict_features(model, transform, raw)
    parts = list(stream_predict(model, transform, iter_chunks(raw, 37)))
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), whole.levels, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), whole.variances, atol=1e-5)
    chunked = predict_features(model, transform, raw, chunk_frames=50)
    np.testing.assert_allclose(chunked.levels, whole.levels, atol=1e-5)
    assert np.ptp(whole.variances[100:, 0]) > 1e-3 * whole.variances[100:, 0].mean()  # the frame's own noise


# ------------------------------------------------------------------------------------------------------------------
# Through the CLI

runner = CliRunner()


def invoke(*args: str) -> str:
    from affect_cli.main import app

    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("virtual-sensor")
    corpus, dataset, run = str(root / "corpus"), str(root / "dataset"), str(root / "run")
    invoke(
        "synth", corpus, "--layout", "parquet", "--videos-per-split", "2", "--frames", "200",
        "--appearance-dim", "4", "--geometric-dim", "4", "--test-labels",
    )  # fmt: skip
    invoke("ingest", corpus, dataset, "--layout", "parquet", "--no-progress")
    invoke(
        "train", dataset, "--out", run, "--dimension", "arousal", "--model", "lstm-kf", "--align", "adaptive",
        "--observation-noise", "learned", "--epochs", "2", "--window-frames", "100", "--no-progress",
    )  # fmt: skip
    return dataset, run


def test_a_learned_noise_bundle_is_written_scored_and_evaluated(learned_run, tmp_path) -> None:
    from affect_core.artifact import load_bundle

    dataset, run = learned_run
    bundle = load_bundle(f"{run}/model")
    trained = bundle.models[0]
    assert trained.config.model.observation_noise == "learned"
    assert trained.model.frontend.head_weight.shape[1] == 6
    assert trained.model.frontend.head_weight[:, 3:].abs().max() > 0  # the noise rows trained
    preds = str(tmp_path / "preds")
    invoke("score", dataset, "--model", f"{run}/model", "--out", preds, "--no-progress")
    evaluation = invoke("evaluate", preds, dataset)
    assert "| test | arousal |" in evaluation


def test_a_bundle_without_the_field_loads_as_fixed_noise(learned_run, tmp_path) -> None:
    """A bundle written before the option (no observation_noise in its config) loads as a fixed-noise model."""
    import shutil

    from affect_core.artifact import load_bundle

    _, run = learned_run
    # A fixed-noise model's weights in place of the learned one's: the head's observation rows only.
    old = tmp_path / "old"
    shutil.copytree(f"{run}/model", old)
    manifest = json.loads((old / "bundle.json").read_text())
    entry = manifest["models"][0]
    del entry["config"]["model"]["observation_noise"]
    (old / "bundle.json").write_text(json.dumps(manifest))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(old / entry["file"]))
    for key in [k for k in weights if k.endswith("head_weight") or k.endswith("head_bias")]:
        weights[key] = weights[key][:, :3].contiguous()  # (1, 6, H) -> (1, 3, H); (1, 6) -> (1, 3)
    save_file(weights, str(old / entry["file"]))
    loaded = load_bundle(str(old))
    assert loaded.models[0].config.model.observation_noise == "fixed"
    assert loaded.models[0].model.frontend.noise_dim == 0
    learned = load_bundle(f"{run}/model")
    x = np.random.default_rng(0).normal(size=(50, 8))
    with torch.no_grad():
        learned.models[0].model.frontend.head_weight[:, 3:] = 0
        learned.models[0].model.frontend.head_bias[:, 3:] = 0
    np.testing.assert_allclose(loaded.predict(x)["arousal"][0], learned.predict(x)["arousal"][0], atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Generated corpora with degraded frames


def test_degraded_frames_are_noisier_and_leave_the_rest_of_the_corpus_alone() -> None:
    from affect_core.synth import SynthConfig, generate

    base = SynthConfig(videos_per_split=1, frames=600, appearance_dim=4, geometric_dim=3, feature_noise=0.5)
    plain = generate(base)
    degraded = generate(base.with_(degraded_share=0.3, degraded_run_s=1.0, degraded_noise=3.0))
    assert plain.degraded == {} and "degraded_share" not in plain.corpus.metadata
    for before, after in zip(plain.corpus.videos, degraded.corpus.videos, strict=True):
        frames = degraded.degraded[before.video_id]
        assert frames.sum() == 180  # round(0.3 * 600)
        np.testing.assert_array_equal(before.features[~frames], after.features[~frames])
        if before.arousal is not None:
            np.testing.assert_array_equal(before.arousal, after.arousal)
        seen = frames & np.isfinite(before.features).all(1)
        extra = (after.features[seen] - before.features[seen]).std(0)
        # the added noise: sqrt(3^2 - 0.5^2) = 2.96 times each feature's scale (0.33 to 1.6 for the features drawn here)
        assert (extra > 0.5).all()
    with pytest.raises(AffectError, match="degraded_noise"):
        base.with_(degraded_share=0.1, degraded_noise=0.1)


def test_a_fixed_noise_configuration_is_written_as_before_the_option() -> None:
    """Fixed noise leaves the written configuration (bundle.json, the bundle's model id) as it was; learned is kept."""
    assert "observation_noise" not in RunConfig().to_dict()["model"]
    learned = RunConfig(model=ModelConfig(model="lstm-kf", observation_noise="learned"))
    assert RunConfig.from_dict(learned.to_dict()).model.observation_noise == "learned"
