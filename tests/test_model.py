"""The model family: every variant builds and runs, outputs have the documented shapes, missing faces are
predict-only filter steps, and the learned lag is reported."""

import itertools
import math

import pytest
import torch

from affect_core.alignment import AdaptiveAlignment
from affect_core.config import ALIGNS, MODELS, ModelConfig
from affect_core.errors import AffectError
from affect_core.filters import ExtendedKalmanFilter, KalmanFilter
from affect_core.model import AffectModel, SeedStack


def make(model="lstm-kf", align="adaptive", dimension="arousal", **kw):
    torch.manual_seed(0)
    return AffectModel(ModelConfig(model=model, align=align, dimension=dimension, input_dim=5, window=10, **kw))


@pytest.mark.parametrize("model,align,dimension", list(itertools.product(MODELS, ALIGNS, ["arousal", "joint"])))
def test_every_variant_is_one_configuration_away(model, align, dimension):
    m = make(model, align, dimension, manual_shift=3)
    x = torch.randn(2, 40, 5)
    out = m(x)
    n = 6 if dimension == "joint" else 3
    assert out.y.shape == (2, 40, n) and out.z.shape == (2, 40, n)
    assert out.levels().shape == (2, 40, n // 3)
    if model == "baseline":
        assert out.P is None and out.y_var is None
    else:
        assert out.P.shape == (2, 40, n, n)
        assert out.y_var.shape == (2, 40, n // 3) and bool((out.y_var > 0).all())
    out.y.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    mu, sigma2 = m.learned_lag()
    if align == "adaptive":
        assert sigma2 > 0
    elif align == "manual":
        assert (mu, sigma2) == (3.0, 0.0)
    else:
        assert (mu, sigma2) == (0.0, 0.0)


def test_joint_variant_orders_valence_first():
    assert ModelConfig(dimension="joint").affect_dimensions == ("valence", "arousal")


@pytest.mark.parametrize("model", ["lstm-kf", "lstm-ekf"])
def test_frames_without_a_face_are_predict_only_steps(model):
    """NaN features: the LSTM sees zeros plus a mask, the filter skips the update, and the covariance grows."""
    m = make(model, "none")
    x = torch.randn(1, 60, 5)
    x[0, 20:40] = float("nan")
    out = m(x)
    assert torch.isfinite(out.y).all()
    level_var = out.P[0, :, 0, 0]
    # without updates the level variance grows monotonically through the gap, then shrinks at the next update
    assert bool((level_var[21:40] > level_var[20:39]).all())
    assert float(level_var[40].detach()) < float(level_var[39].detach())
    # the filter's state in the gap follows the mean-reverting gap step z_t = G z_{t-1} + c (KF and EKF alike)
    z = out.z[0].detach()
    G, c = m.filters[0].gap_transition(z)
    assert torch.allclose(z[25], z[24] @ G.T + c, atol=1e-5)


def test_mask_argument_equals_nan_rows():
    m = make("lstm-kf", "adaptive")
    x = torch.randn(1, 50, 5)
    mask = torch.ones(1, 50, dtype=torch.bool)
    mask[0, 10:15] = False
    x_nan = x.clone()
    x_nan[0, 10:15] = float("nan")
    a, b = m(x, mask=mask), m(x_nan)
    assert torch.allclose(a.y, b.y, atol=1e-6)


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(AffectError, match=r"expected shape \(B, T, 5\)"):
        make()(torch.randn(1, 10, 4))


def test_unknown_variant_names_are_refused():
    with pytest.raises(AffectError, match="model must be one of"):
        ModelConfig(model="lstm-ukf")
    with pytest.raises(AffectError, match="align must be one of"):
        ModelConfig(align="auto")


def test_finite_rows_finds_every_non_finite_frame():
    from affect_core.model import finite_rows

    x = torch.randn(3, 50, 7)
    x[0, 3, 2] = float("nan")
    x[1, 4, 0] = float("inf")
    x[2, 6, :2] = float("-inf")
    x[2, 5] = 3e38  # finite values whose row sum overflows: still an observed frame
    assert torch.equal(finite_rows(x), torch.isfinite(x).all(-1))
    assert bool(finite_rows(x)[2, 5]) and int((~finite_rows(x)).sum()) == 3
    assert bool(finite_rows(torch.randn(2, 9, 4)).all())


@pytest.mark.parametrize("model", ["lstm-kf", "lstm-ekf", "baseline"])
def test_fully_observed_batch_takes_the_unmasked_path_with_the_same_result(model):
    """A batch with every frame observed skips the masking (no mask writes, one shared covariance recursion);
    forcing the masked path with an all-True mask must give the same outputs and gradients."""
    m = make(model).double()
    x = torch.randn(3, 60, 5, dtype=torch.float64)
    results = []
    for force_mask in (False, True):
        m.zero_grad()
        o, _ = m.frontend(x, torch.ones(3, 60, dtype=torch.bool) if force_mask else None)
        mask = torch.ones(3, 60, dtype=torch.bool) if force_mask else None
        z = m.filters(0, o[0], mask=mask).states if m.filters else o[0]
        z.square().sum().backward()
        results.append((z.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=1e-10)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def reference_front_end(m: AffectModel, x: torch.Tensor, mask: torch.Tensor, seed: int = 0):
    """The paper's front-end written with torch.nn layers on seed ``seed``'s weights: [x, mask] -> Linear+ReLU
    layers -> nn.LSTM -> Linear+tanh. Returns o (B, T, m) and the LSTM's (h_n, c_n)."""
    fe = m.frontend
    h = torch.cat([x.masked_fill(~mask.unsqueeze(-1), 0.0), mask.unsqueeze(-1).to(x.dtype)], dim=-1)
    for j in range(fe.layers):
        h = torch.relu(
            torch.nn.functional.linear(h, getattr(fe, f"ff{j}_weight")[seed], getattr(fe, f"ff{j}_bias")[seed])
        )
    lstm = torch.nn.LSTM(h.shape[-1], fe.lstm_size, batch_first=True)
    weights = {
        f"{name}_l0": getattr(fe, f"lstm_{name}")[seed] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    out, state = torch.func.functional_call(lstm, weights, (h,))
    return torch.tanh(torch.nn.functional.linear(out, fe.head_weight[seed], fe.head_bias[seed])), state


@pytest.mark.parametrize("grad", [True, False])
def test_front_end_equals_torch_nn_layers_and_carries_its_state_across_pieces(grad):
    """The front-end (compiled LSTM on CPU float32, with and without gradients) equals torch.nn layers on the same
    weights, and running a sequence in two pieces with the state carried gives the whole sequence's result."""
    m = make("lstm-kf")
    x = torch.randn(3, 80, 5)
    mask = torch.rand(3, 80) > 0.2
    expected, (h_n, c_n) = reference_front_end(m, x, mask)
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
    with torch.set_grad_enabled(grad):
        whole, (h_w, c_w) = m.frontend(x, mask)
        first, state = m.frontend(x[:, :30], mask[:, :30])
        second, (h_c, c_c) = m.frontend(x[:, 30:], mask[:, 30:], state)
    torch.testing.assert_close(whole[0], expected.detach(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([first, second], 2), whole, atol=1e-6, rtol=0)
    for got in (h_w, h_c):
        torch.testing.assert_close(got[0], h_n[0].detach(), atol=2e-6, rtol=1e-5)
    for got in (c_w, c_c):
        torch.testing.assert_close(got[0], c_n[0].detach(), atol=2e-6, rtol=1e-5)


def test_front_end_gradients_equal_torch_nn_layers():
    """The compiled LSTM's hand-derived backward through the whole front-end equals autograd through torch.nn."""
    m = make("lstm-kf")
    x = torch.randn(2, 50, 5)
    mask = torch.rand(2, 50) > 0.3
    expected, _ = reference_front_end(m, x, mask)
    expected.square().sum().backward()
    wanted = {name: p.grad.clone() for name, p in m.frontend.named_parameters()}
    m.zero_grad()
    got, _ = m.frontend(x.masked_fill(~mask.unsqueeze(-1), 0.0), mask)
    got.square().sum().backward()
    for name, p in m.frontend.named_parameters():
        torch.testing.assert_close(p.grad, wanted[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_model_of_several_seeds_is_each_seed_alone():
    """Seeds of one model never interact: each seed of a 3-seed model predicts what its one-seed model predicts, and
    its weights are those ``torch.manual_seed(seed)`` draws for one model."""
    config = ModelConfig(model="lstm-ekf", align="adaptive", input_dim=5, window=10)
    stack = AffectModel(config, seeds=[4, 5, 6])
    x = torch.randn(2, 60, 5)
    x[0, 10:15] = float("nan")
    out = stack.causal(x)
    for s, seed in enumerate([4, 5, 6]):
        alone = AffectModel(config, seeds=[seed])
        for name, value in alone.state_dict().items():
            torch.testing.assert_close(stack.seed_state(s)[name], value, msg=name)
        y = stack.noncausal(out.states[s], s)
        torch.testing.assert_close(y, alone(x).y, atol=1e-6, rtol=1e-5)


def _distinct_modules(kind: str, count: int) -> list[torch.nn.Module]:
    """``count`` modules of one kind whose parameters differ from seed to seed (as training makes them)."""
    modules = []
    for s in range(count):
        module = {
            "kf": lambda: KalmanFilter(num_dims=2, method="compiled"),
            "ekf": lambda: ExtendedKalmanFilter(num_dims=1, method="compiled"),
            "kf-reference": lambda: KalmanFilter(num_dims=1, method="reference"),
            "alignment": lambda: AdaptiveAlignment(window=10, mu_init=3.0, sigma2_init=4.0),
        }[kind]()
        generator = torch.Generator().manual_seed(100 + s)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        modules.append(module)
    return modules


@pytest.mark.parametrize("kind", ["kf", "ekf", "kf-reference", "alignment"])
def test_a_seed_stack_gives_each_seed_its_own_modules_values_and_gradients(kind):
    """Seed s of a stack runs the module's code on row s of the stacked tensors: its outputs and its gradients (row s
    of each stacked parameter's gradient) equal those of the seed's own module, and the rows of the seeds that did not
    run get none."""
    modules = _distinct_modules(kind, 3)
    stack = SeedStack(modules)
    width = 3 if kind in ("ekf", "kf-reference", "alignment") else 6
    x = torch.randn(2, 50, width, generator=torch.Generator().manual_seed(7))
    mask = torch.rand(2, 50, generator=torch.Generator().manual_seed(8)) > 0.2
    for s in (0, 2):
        stack.zero_grad()
        module = modules[s]
        module.zero_grad()
        if kind == "alignment":
            got, wanted = stack(s, x), module(x)
            loss_got, loss_wanted = got.square().sum(), wanted.square().sum()
        else:
            got, wanted = stack(s, x, mask=mask), module(x, mask=mask)
            torch.testing.assert_close(got.covariances, wanted.covariances, atol=0, rtol=0)
            got, wanted = got.states, wanted.states
            loss_got = got.square().sum() + got.sin().sum()
            loss_wanted = wanted.square().sum() + wanted.sin().sum()
        torch.testing.assert_close(got, wanted, atol=0, rtol=0)
        loss_got.backward()
        loss_wanted.backward()
        for name, stacked in stack.named_parameters():
            own = module.get_parameter(name).grad
            torch.testing.assert_close(stacked.grad[s], own, atol=0, rtol=0, msg=name)
            others = [r for r in range(3) if r != s]
            assert not stacked.grad[others].any(), name


def test_a_seed_stack_keeps_the_state_dict_of_one_module_per_seed():
    """Bundles and checkpoints hold keys ``filters.{s}.{name}`` with one module's shapes (the layout of a list of one
    module per seed): the stack writes exactly that, reads it back, and refuses wrong shapes and unknown keys."""
    modules = _distinct_modules("ekf", 2)
    stack = SeedStack(modules)
    written = stack.state_dict()
    expected = torch.nn.ModuleList(modules).state_dict()
    assert list(written) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(written[key], value, atol=0, rtol=0, msg=key)
    assert written["0.W_f"].untyped_storage().data_ptr() != written["1.W_f"].untyped_storage().data_ptr()
    other = SeedStack(_distinct_modules("ekf", 2)[::-1])
    other.load_state_dict(expected)
    expected_names = set(modules[0].state_dict())
    assert "gap_couplings" not in expected_names and "gap_couplings" in dict(other.stacked())
    for name, value in other.stacked():
        if name not in expected_names:  # a non-persistent buffer (the gap step's couplings): stacked, never saved
            torch.testing.assert_close(value[1], getattr(modules[0], name), atol=0, rtol=0)
            continue
        for s, module in enumerate(modules):
            torch.testing.assert_close(value[s], module.state_dict()[name], atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="size mismatch for 1.W_f"):
        other.load_state_dict({**expected, "1.W_f": torch.zeros(2, 2)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict({**expected, "2.W_f": torch.zeros(3, 3)})
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict({k: v for k, v in expected.items() if k != "0.q"})


def test_a_model_of_seeds_keeps_its_state_dict_layout():
    """The keys of a model's state dict are those of the model with one filter and one alignment module per seed."""
    state = AffectModel(
        ModelConfig(model="lstm-kf", align="adaptive", input_dim=5, window=10), seeds=[0, 1]
    ).state_dict()
    for s in (0, 1):
        assert state[f"filters.{s}.F"].shape == (3, 3) and state[f"filters.{s}.P0"].shape == (3, 3)
        assert state[f"alignments.{s}.mu_raw"].shape == () and state[f"alignments.{s}.offsets"].shape == (21,)
    assert not any(key.startswith(("filters.2", "alignments.2")) for key in state)
    assert AffectModel(ModelConfig(model="baseline", align="none", input_dim=5)).filters is None


def _louder(monkeypatch, gain: float = 8.0) -> None:
    """Patches the model's causal stages to return their states times ``gain``: aligned levels well outside
    [-1, 1], on every path (training, evaluation, batched scoring and streaming all go through ``causal``)."""
    original = AffectModel.causal

    def causal(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.states = [None if z is None else gain * z for z in out.states]
        return out

    monkeypatch.setattr(AffectModel, "causal", causal)


@pytest.mark.parametrize("model", ["lstm-kf", "lstm-ekf", "baseline"])
def test_every_path_maps_the_aligned_levels_into_minus_one_one(model, monkeypatch):
    """The output map (a clamp of the aligned levels) is the model's last stage on every path: forward, training's
    loss input, batched prediction and streaming; the derivative channels pass unchanged."""
    import numpy as np

    import affect_core.training as training
    from affect_core.config import RunConfig, TrainConfig
    from affect_core.inference import predict_features
    from affect_core.model import output_map
    from affect_core.streaming import iter_chunks, stream_predict

    m = make(model, mu_init_frames=3)
    x = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32)
    x[50:60] = np.nan
    _louder(monkeypatch)
    with torch.no_grad():
        out = m(torch.from_numpy(x)[None])
        unbounded = m.noncausal(out.z)
    assert float(unbounded[..., 0::3].abs().max()) > 1.5  # the patch pushed levels out of range
    torch.testing.assert_close(out.y[..., 0::3], unbounded[..., 0::3].clamp(-1, 1))
    torch.testing.assert_close(out.y[..., 1::3], unbounded[..., 1::3])
    torch.testing.assert_close(out.y[..., 2::3], unbounded[..., 2::3])
    levels = out.y[0, :, 0::3].numpy()
    assert np.abs(levels).max() == 1.0
    batched = predict_features(m, None, x).levels
    streamed = np.concatenate([p[0] for p in stream_predict(m, None, iter_chunks(x, 17))])
    np.testing.assert_allclose(batched, levels, atol=1e-5)
    np.testing.assert_allclose(streamed, levels, atol=1e-5)
    assert np.abs(batched).max() <= 1.0 and np.abs(streamed).max() <= 1.0
    assert torch.equal(output_map(torch.tensor([-3.0, -1.0, 0.25, 1.0, 7.0])), torch.tensor([-1.0, -1, 0.25, 1, 1]))

    seen = []

    def loss_parts(y, labels, **kwargs):
        seen.append(y.detach().clone())
        return original_parts(y, labels, **kwargs)

    original_parts = training.affect_loss_parts
    monkeypatch.setattr(training, "affect_loss_parts", loss_parts)
    labels = np.tanh(np.random.default_rng(1).normal(size=(120, 1))).astype(np.float32)
    batch = training.pad_batch([(x, labels)])
    step = training.Step(batch.x, batch.observed, [batch.labels], [120])
    config = RunConfig(model=m.config, train=TrainConfig())
    training.training_step(m, training.build_optimizer(m, config), step, [0], fps=25.0, train=config.train)
    assert len(seen) == 1 and float(seen[0][..., 0::3].abs().max()) == 1.0
    torch.testing.assert_close(seen[0][..., 0::3], torch.from_numpy(levels)[None], atol=1e-5, rtol=0)


def test_bounded_state_clamps_the_levels_only_with_hardtanh_values_and_gradients() -> None:
    """`bounded_state` (one copy each way) gives what hardtanh on the sliced-out levels concatenated back gives:
    values and gradients, NaN and infinities, levels exactly at a bound (zero gradient there, as hardtanh's), several
    affect dimensions side by side; and its backward is differentiable again."""
    from torch.nn import functional as F

    from affect_core.model import bounded_state

    y = torch.randn(4, 50, 6, dtype=torch.float64) * 1.5
    y[0, 1, 0], y[0, 2, 3], y[1, 3, 0], y[1, 4, 1], y[2, 5, 4] = math.nan, 1.0, -1.0, math.inf, -math.inf

    def sliced(x: torch.Tensor) -> torch.Tensor:
        levels, derivatives = x[..., 0::3], x.unflatten(-1, (-1, 3))[..., 1:]
        return torch.cat([F.hardtanh(levels).unsqueeze(-1), derivatives], dim=-1).flatten(-2)

    weights = torch.randn_like(y)
    results = []
    for f in (sliced, bounded_state):
        x = y.clone().requires_grad_(True)
        out = f(x)
        (out * weights).nansum().backward()
        results.append((out.detach(), x.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    assert float(results[1][1][0, 2, 3]) == 0.0 and float(results[1][1][1, 3, 0]) == 0.0  # at a bound: hardtanh's 0
    small = (0.5 * torch.randn(2, 5, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradgradcheck(bounded_state, (small,))
