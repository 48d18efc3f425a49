"""Stretches without a face: the filters' mean-reverting gap step on every path, bounded whatever the stretch's length.

A frame without an observation predicts with z^ = G z + c, P^ = G P G^T + Q: per affect dimension
G = [[rho_l, dt, dt^2/2], [0, rho_v, dt], [0, 0, rho_a]] (the constant-acceleration model with its diagonal damped),
c = (1 - rho_l) * mean on the level. G is triangular with eigenvalues rho < 1, so in a stretch the state tends to
(mean, 0, 0) and the covariance to the stationary P_inf = G P_inf G^T + Q, whatever the stretch's length; the tests
follow each stretch step by step against that recursion and check where it ends.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.func import functional_call

from affect_core.filters import BayesFilter, ExtendedKalmanFilter, KalmanFilter
from affect_core.filters.base import GAP_PARAMETERS, GAP_RHO_MAX

FPS = 25
GAPS_S = (0, 10, 60, 600)  # seconds without a face: none, 10 s, 60 s, 10 min (15,000 frames at 25 fps)
OBSERVED = 50  # observed frames before and after each stretch
PATHS = [(KalmanFilter, "compiled"), (KalmanFilter, "scan"), (ExtendedKalmanFilter, "compiled")]


def perturbed(cls: type[BayesFilter], method: str, seed: int, scale: float = 0.2) -> BayesFilter:
    """A float64 layer with every parameter moved away from its initial value (the gap mean away from 0)."""
    gen = torch.Generator().manual_seed(seed)
    layer = cls(num_dims=2, method=method).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=gen, dtype=torch.float64))
        layer.gap_mean.copy_(torch.tensor([0.4, -0.3], dtype=torch.float64))
    return layer


def gap_batch(steps_without: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence per stretch length: OBSERVED frames, the stretch, then observed frames to the common end; and a
    last sequence with no observed frame at all. Observations in [-1, 1], NaN where there is no face."""
    steps = 2 * OBSERVED + max(steps_without)
    gen = torch.Generator().manual_seed(3)
    observations = torch.tanh(0.1 * torch.randn(len(steps_without) + 1, steps, 6, generator=gen).cumsum(1))
    mask = torch.ones(len(steps_without) + 1, steps, dtype=torch.bool)
    for row, length in enumerate(steps_without):
        mask[row, OBSERVED : OBSERVED + length] = False
    mask[-1] = False
    return observations.masked_fill(~mask.unsqueeze(-1), float("nan")), mask


def stationary_covariance(layer: BayesFilter) -> torch.Tensor:
    """P_inf = G P_inf G^T + Q, the covariance a stretch without a face settles at (float64, by doubling). `(n, n)`."""
    with torch.no_grad():
        G, _ = (m.double() for m in layer.gap_transition(torch.zeros((), dtype=torch.float64)))
        P = torch.diag(torch.nn.functional.softplus(layer.q.double()))
        A = G.clone()
        for _ in range(40):  # P_{2k} = P_k + A_k P_k A_k^T, A_{2k} = A_k^2: 2^40 steps
            P = P + A @ P @ A.mT
            A = A @ A
    return P


def follow_stretch(layer: BayesFilter, z: torch.Tensor, P: torch.Tensor, steps: int) -> tuple[torch.Tensor, ...]:
    """The gap recursion from (z, P) for ``steps`` frames in float64: levels-and-all states (steps, n), covariances
    (steps, n, n)."""
    with torch.no_grad():
        G, c = (m.double() for m in layer.gap_transition(torch.zeros((), dtype=torch.float64)))
        Q = torch.diag(torch.nn.functional.softplus(layer.q.double()))
        z, P = z.double(), P.double()
        states, covariances = [], []
        for _ in range(steps):
            z = G @ z + c
            P = G @ P @ G.mT + Q
            states.append(z)
            covariances.append(P)
    return torch.stack(states), torch.stack(covariances)


# ------------------------------------------------------------------------------------------------------------------
# Bounded through any stretch


@pytest.mark.parametrize(
    ("cls", "method", "longest_s"),
    [(KalmanFilter, "compiled", 600), (ExtendedKalmanFilter, "compiled", 600), (KalmanFilter, "scan", 60)],
)
def test_states_and_variances_stay_bounded_through_any_stretch_without_a_face(
    cls: type[BayesFilter], method: str, longest_s: int
) -> None:
    layer = cls(num_dims=2, method=method)  # float32, the initial parameters, as a model starts training
    with torch.no_grad():
        layer.gap_mean.copy_(torch.tensor([0.4, -0.3]))
        lengths = [FPS * s for s in GAPS_S if s <= longest_s]
        observations, mask = gap_batch(lengths)
        out = layer(observations, mask=mask)
        mean = layer.gap_mean.double()
    stationary = stationary_covariance(layer)
    assert bool(torch.isfinite(stationary).all()) and float(torch.linalg.eigvalsh(stationary).min()) > 0
    states, covariances = out.states, out.covariances
    assert bool(torch.isfinite(states).all()) and bool(torch.isfinite(covariances).all())
    assert float(states[..., 0::3].abs().max()) < 1.5  # observations in [-1, 1]: the level stays within [-1.5, 1.5]
    # P_t = G^k P_g G^kT + sum_{j<k} G^j Q G^jT <= kappa^2 |P_g| + |P_inf| in a stretch begun at g, where
    # kappa = max_k |G^k| (finite: G's eigenvalues are below 1)
    G = layer.gap_transition(torch.zeros((), dtype=torch.float64))[0].detach().double()
    power, kappa = torch.eye(G.shape[0], dtype=torch.float64), 1.0
    for _ in range(FPS * 600):
        power = G @ power
        kappa = max(kappa, float(torch.linalg.matrix_norm(power, ord=2)))
    largest_start = max(float(torch.linalg.eigvalsh(P).max()) for P in (layer.P0.double(), covariances[mask].double()))
    cap = (kappa**2 * largest_start + float(torch.linalg.eigvalsh(stationary).max())) * (1 + 1e-4)
    assert float(torch.diagonal(covariances, dim1=-2, dim2=-1).max()) <= cap
    for row, length in enumerate(lengths + [observations.shape[1]]):
        if length == 0:
            continue
        start = OBSERVED - 1 if row < len(lengths) else -1  # the last filtered frame before the stretch
        z = states[row, start] if start >= 0 else layer.z0
        P = covariances[row, start] if start >= 0 else layer.P0
        expected_z, expected_P = follow_stretch(layer, z, P, length)
        stretch = slice(start + 1, start + 1 + length)
        torch.testing.assert_close(states[row, stretch].double(), expected_z, atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(covariances[row, stretch].double(), expected_P, atol=2e-4, rtol=1e-3)
        if length >= FPS * 600:  # after ten minutes: the level at the mean, no motion, the stationary covariance
            end = states[row, start + length].double()
            torch.testing.assert_close(end[0::3], mean, atol=1e-4, rtol=0)
            assert float(end[1::3].abs().max()) < 1e-4 and float(end[2::3].abs().max()) < 1e-4
            torch.testing.assert_close(covariances[row, start + length].double(), stationary, atol=1e-5, rtol=1e-3)
    # the gap dynamics are stable whatever rho: G's eigenvalues are the rho, at most GAP_RHO_MAX < 1
    G, _ = layer.gap_transition(torch.zeros(()))
    assert float(torch.linalg.eigvals(G.detach().double()).abs().max()) <= GAP_RHO_MAX


def test_gap_parameters_start_at_the_stated_time_constants() -> None:
    for cls in (KalmanFilter, ExtendedKalmanFilter):
        layer = cls(num_dims=2, fps=FPS)
        G, c = layer.gap_transition(torch.zeros(()))
        rho = torch.diagonal(G)
        expected = [math.exp(-1 / FPS / 10.0), math.exp(-1 / FPS / 1.0), math.exp(-1 / FPS / 1.0)] * 2
        torch.testing.assert_close(rho, torch.tensor(expected), atol=1e-6, rtol=0)
        # above the diagonal the kinematic couplings of each dimension, nothing between dimensions
        couplings = torch.tensor([[0, 1 / FPS, 0.5 / FPS**2], [0, 0, 1 / FPS], [0, 0, 0]], dtype=torch.float32)
        torch.testing.assert_close(G - torch.diag_embed(rho), torch.block_diag(couplings, couplings))
        assert c.abs().sum() == 0  # mean 0 at the start
        with torch.no_grad():
            layer.gap_mean.copy_(torch.tensor([0.5, -0.25]))
            layer.gap_rho.fill_(1e4)  # rho saturates at its cap, never at 1
        G, c = (m.detach() for m in layer.gap_transition(torch.zeros(())))
        assert float(torch.diagonal(G).max()) <= GAP_RHO_MAX
        torch.testing.assert_close(c[0::3], (1 - torch.diagonal(G)[0::3]) * torch.tensor([0.5, -0.25]))
        assert c[1::3].abs().sum() == 0 and c[2::3].abs().sum() == 0


# ------------------------------------------------------------------------------------------------------------------
# Every path equals the reference loop through gaps: values and gradients, chunked too


def oracle_mask(batch: int, steps: int) -> torch.Tensor:
    mask = torch.rand(batch, steps, generator=torch.Generator().manual_seed(5)) < 0.7
    mask[0, :9] = False  # starts without a face
    mask[1, 10:35] = False  # a long run
    mask[2, -7:] = False  # ends without a face
    mask[3] = False  # no face at all
    return mask


def run_all(
    layer: BayesFilter, observations: torch.Tensor, mask: torch.Tensor, chunks: int
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """States and covariances of each sequence filtered alone in `chunks` pieces (each piece starting from the last
    state of the one before), and the gradients of a weighted sum w.r.t. every parameter and the observations."""
    observations = observations.clone().requires_grad_(True)
    layer.zero_grad()
    states, covariances = [], []
    for b in range(observations.shape[0]):
        initial = None
        pieces_z, pieces_p = [], []
        for piece in torch.tensor_split(torch.arange(observations.shape[1]), chunks):
            out = layer(observations[b : b + 1, piece], mask=mask[b : b + 1, piece], initial=initial)
            initial = (out.states[0, -1], out.covariances[0, -1])
            pieces_z.append(out.states)
            pieces_p.append(out.covariances)
        states.append(torch.cat(pieces_z, dim=1))
        covariances.append(torch.cat(pieces_p, dim=1))
    z, P = torch.cat(states), torch.cat(covariances)
    gen = torch.Generator().manual_seed(9)
    weights_z = torch.randn(z.shape, generator=gen, dtype=z.dtype)
    weights_p = torch.randn(P.shape, generator=gen, dtype=z.dtype)
    ((z * weights_z).sum() + (P * weights_p).sum()).backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    grads["observations"] = torch.nan_to_num(observations.grad)
    return [z.detach(), P.detach()], grads


@pytest.mark.parametrize(("cls", "method"), PATHS)
@pytest.mark.parametrize("chunks", [1, 3])
def test_every_path_equals_the_reference_through_gaps(cls: type[BayesFilter], method: str, chunks: int) -> None:
    batch, steps = 4, 48
    observations = 0.8 * torch.randn(batch, steps, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mask = oracle_mask(batch, steps)
    observations = observations.masked_fill(~mask.unsqueeze(-1), float("nan"))
    results = {}
    for name in ("reference", method):
        results[name] = run_all(perturbed(cls, name, seed=11), observations, mask, chunks)
    (ref_values, ref_grads), (values, grads) = results["reference"], results[method]
    for ref, fast in zip(ref_values, values, strict=True):
        assert bool(torch.isfinite(fast).all())
        torch.testing.assert_close(fast, ref, atol=1e-9, rtol=1e-9)
    for name in ref_grads:
        assert ref_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-8, rtol=1e-8, msg=name)


@pytest.mark.parametrize(("cls", "method"), [(KalmanFilter, "compiled"), (ExtendedKalmanFilter, "compiled")])
def test_gradcheck_through_gaps(cls: type[BayesFilter], method: str) -> None:
    """Finite differences in float64 against the compiled kernels' hand-derived backward, with a sequence starting
    and ending without a face and one with no face at all, from a given initial state."""
    layer = cls(num_dims=1, method=method).double()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(22)
        for parameter in layer.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=gen, dtype=torch.float64))
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters())
    observations = torch.randn(3, 6, 3, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    observations.requires_grad_(True)
    mask = torch.tensor(
        [[False, False, True, True, False, False], [True, False, False, False, True, True], [False] * 6]
    )
    z0 = torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64, requires_grad=True)
    A = torch.randn(3, 3, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    P0 = (0.2 * A @ A.T + 0.5 * torch.eye(3, dtype=torch.float64)).requires_grad_(True)

    def run(obs: torch.Tensor, z: torch.Tensor, P: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = functional_call(
            layer, dict(zip(names, values, strict=True)), (obs,), {"mask": mask, "initial": (z, 0.5 * (P + P.mT))}
        )
        return out.states, out.covariances

    assert torch.autograd.gradcheck(run, (observations, z0, P0, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_seeds_stacked_run_the_gap_step() -> None:
    """Stacked along a seed axis (`torch.func.functional_call`, as the model's SeedStack runs them), each seed's
    gap parameters are its own."""
    layers = [perturbed(KalmanFilter, "compiled", seed=s) for s in (31, 32)]
    observations, mask = gap_batch([10, 40])
    observations = observations.double()
    for layer in layers:
        names = [name for name, _ in layer.named_parameters()]
        stacked = {name: torch.stack([m.get_parameter(name) for m in layers]) for name in names}
        seed = layers.index(layer)
        out = functional_call(layer, {n: v[seed] for n, v in stacked.items()}, (observations,), {"mask": mask})
        expected = layer(observations, mask=mask)
        torch.testing.assert_close(out.states, expected.states)
    a, b = (m(observations, mask=mask).states for m in layers)
    assert not torch.allclose(a[-1], b[-1])  # two gap means, two levels through the stretch


# ------------------------------------------------------------------------------------------------------------------
# Old bundles


def test_a_bundle_without_the_gap_parameters_loads_with_their_initial_values_and_scores(tmp_path) -> None:
    from affect_core.artifact import ModelBundle, TrainedModel, load_bundle, save_bundle
    from affect_core.config import ModelConfig, RunConfig
    from affect_core.features import FeatureTransform
    from affect_core.model import AffectModel

    features = 5
    for variant in ("lstm-kf", "lstm-ekf"):
        config = RunConfig(model=ModelConfig(input_dim=features, model=variant, window=10))
        torch.manual_seed(0)
        model = AffectModel(config.model)
        transform = FeatureTransform(np.zeros(features), np.ones(features), None, 0)
        trained = TrainedModel("arousal", model, transform, config, {})
        bundle = ModelBundle([trained], [f"f{i}" for i in range(features)], "test", float(FPS))
        target = tmp_path / variant
        save_bundle(bundle, str(target))
        weights = target / "arousal.safetensors"
        tensors = load_safetensors(weights.read_bytes())
        dropped = [key for key in tensors if key.rpartition(".")[2] in GAP_PARAMETERS]
        assert dropped  # the bundle held them
        weights.write_bytes(save_safetensors({k: v for k, v in tensors.items() if k not in dropped}))

        loaded = load_bundle(str(target))
        fresh = AffectModel(config.model).filters.seed_module(0)
        old = loaded.models[0].model.filters.seed_module(0)
        torch.testing.assert_close(old.gap_rho, fresh.gap_rho, atol=0, rtol=0)
        assert old.gap_mean.abs().sum() == 0
        video = np.random.default_rng(1).normal(size=(400, features)).astype(np.float32)
        video[100:350] = np.nan  # 10 s without a face
        level, variance = loaded.predict(video)["arousal"]
        assert np.isfinite(level).all() and np.isfinite(variance).all()
        before, _ = bundle.predict(video)["arousal"]
        np.testing.assert_array_equal(level, before)
