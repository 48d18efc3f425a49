"""The front-end's LSTM for S seeds (`affect_core.frontend.lstm_hidden`): the compiled CPU recurrence
(`affect_core._seed_lstm`) against torch.nn.LSTM run seed by seed, from a carried state, and S seeds run together
against each seed run alone."""

from __future__ import annotations

import pytest
import torch

from affect_core.frontend import lstm_hidden

SEEDS, BATCH, STEPS, WIDTH, SIZE = 3, 2, 60, 5, 8
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def seed_lstms(dtype: torch.dtype = torch.float32) -> list[torch.nn.LSTM]:
    torch.manual_seed(11)
    return [torch.nn.LSTM(WIDTH, SIZE, batch_first=True).to(dtype) for _ in range(SEEDS)]


def stacked(lstms: list[torch.nn.LSTM]) -> dict[str, torch.Tensor]:
    """Each seed's nn.LSTM weights stacked along a leading seed axis, as leaves that take gradients."""
    return {name: torch.stack([getattr(m, f"{name}_l0") for m in lstms]).detach().requires_grad_() for name in NAMES}


def inputs_and_state(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """x (S, B, T, D) and a nonzero (h, c) (S, B, H) to start from, as a sequence's second piece starts."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(SEEDS, BATCH, STEPS, WIDTH, generator=generator, dtype=dtype)
    h0 = 0.5 * torch.randn(SEEDS, BATCH, SIZE, generator=generator, dtype=dtype)
    c0 = torch.randn(SEEDS, BATCH, SIZE, generator=generator, dtype=dtype)
    return x, (h0, c0)


def transposed(x: torch.Tensor) -> torch.Tensor:
    """(S, B, T, D) -> the front-end's layout (S, D, B*T)."""
    return x.reshape(x.shape[0], -1, x.shape[-1]).mT


def template() -> torch.nn.LSTM:
    return torch.nn.LSTM(WIDTH, SIZE, batch_first=True)


def test_compiled_lstm_equals_nn_lstm_per_seed_values_state_and_gradients():
    """The compiled path (float32 on the CPU) from a nonzero state: hidden states, the last (h, c) and the gradients
    of the inputs, both weight matrices and both biases equal each seed's nn.LSTM."""
    lstms = seed_lstms()
    weights = stacked(lstms)
    x, state = inputs_and_state()
    x.requires_grad_()
    hidden, (h_n, c_n) = lstm_hidden(transposed(x), weights, BATCH, state, template())
    loss = (hidden**3).sum() + (hidden[:, :, ::7] * torch.linspace(-1, 1, SIZE)).sum()
    grads = torch.autograd.grad(loss, [x, *weights.values()])
    for s, lstm in enumerate(lstms):
        xs = x[s].detach().requires_grad_()
        expected, (h_ref, c_ref) = lstm(xs, (state[0][s : s + 1], state[1][s : s + 1]))
        torch.testing.assert_close(hidden[s], expected, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(h_n[s], h_ref[0], atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(c_n[s], c_ref[0], atol=2e-6, rtol=1e-5)
        ref_loss = (expected**3).sum() + (expected[:, ::7] * torch.linspace(-1, 1, SIZE)).sum()
        ref = torch.autograd.grad(ref_loss, [xs, *(getattr(lstm, f"{n}_l0") for n in NAMES)])
        for mine, theirs in zip((g[s] for g in grads), ref, strict=True):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_seeds_together_equal_each_seed_alone_bit_for_bit():
    """Seeds never interact: each seed's hidden states, last state and gradients in a stack of S equal those of the
    seed run alone (S = 1), exactly."""
    lstms = seed_lstms()
    weights = stacked(lstms)
    x, state = inputs_and_state()
    g_out = torch.randn(SEEDS, BATCH, STEPS, SIZE, generator=torch.Generator().manual_seed(3))
    hidden, (h_n, c_n) = lstm_hidden(transposed(x), weights, BATCH, state, template())
    grads = torch.autograd.grad(hidden, list(weights.values()), g_out)
    for s in range(SEEDS):
        alone = {name: value[s : s + 1].detach().requires_grad_() for name, value in weights.items()}
        one_state = (state[0][s : s + 1], state[1][s : s + 1])
        h_alone, (h_last, c_last) = lstm_hidden(transposed(x[s : s + 1]), alone, BATCH, one_state, template())
        assert torch.equal(hidden[s], h_alone[0])
        assert torch.equal(h_n[s], h_last[0]) and torch.equal(c_n[s], c_last[0])
        alone_grads = torch.autograd.grad(h_alone, list(alone.values()), g_out[s : s + 1])
        for mine, theirs in zip(grads, alone_grads, strict=True):
            assert torch.equal(mine[s], theirs[0])


@pytest.mark.parametrize("grad", [True, False])
def test_state_carried_across_pieces_equals_one_pass(grad):
    """A sequence cut in two pieces, the (h, c) of the first carried into the second, gives the hidden states of one
    pass (with gradients kept, the kernel saves activations; without, it keeps only the running state)."""
    weights = stacked(seed_lstms())
    x, state = inputs_and_state()
    with torch.set_grad_enabled(grad):
        whole, (h_whole, c_whole) = lstm_hidden(transposed(x), weights, BATCH, state, template())
        cut = STEPS // 3
        first, carried = lstm_hidden(transposed(x[:, :, :cut].contiguous()), weights, BATCH, state, template())
        second, (h_end, c_end) = lstm_hidden(
            transposed(x[:, :, cut:].contiguous()), weights, BATCH, carried, template()
        )
    torch.testing.assert_close(torch.cat([first, second], dim=2), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h_end, h_whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c_end, c_whole, atol=1e-6, rtol=1e-6)


def test_float64_path_runs_nn_lstm_and_agrees_with_the_compiled_path():
    """float64 takes the per-seed nn.LSTM path (the GPU's path); its values and gradients agree with the compiled
    float32 path to float32 precision."""
    lstms = seed_lstms()
    weights32 = stacked(lstms)
    weights64 = {name: value.detach().double().requires_grad_() for name, value in weights32.items()}
    x, state = inputs_and_state()
    out32, _ = lstm_hidden(transposed(x), weights32, BATCH, state, template())
    out64, _ = lstm_hidden(
        transposed(x.double()), weights64, BATCH, (state[0].double(), state[1].double()), template().double()
    )
    torch.testing.assert_close(out32.double(), out64, atol=2e-6, rtol=1e-5)
    g32 = torch.autograd.grad(out32.square().sum(), list(weights32.values()))
    g64 = torch.autograd.grad(out64.square().sum(), list(weights64.values()))
    for a, b in zip(g32, g64, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)
