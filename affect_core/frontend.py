"""The model's front-end for S seeds at once: [x_t, mask_t] -> FF(29)+ReLU -> FF(16)+ReLU -> LSTM(16) -> FC(m)+tanh.

Every parameter carries a leading seed dimension S (S = 1 for one model), so one model and a stack of seeds trained
together run the same code. The layers are "transposed" products over (S, width, B*T) whose operands need no
copies; with one input for every seed (x of shape (B, T, d)) the first layer of all seeds is one matrix product.

The LSTM recurrence has two implementations behind :func:`lstm_hidden`, chosen there and nowhere else:
- float32 on the CPU: the compiled recurrence of ``affect_core._seed_lstm`` (input projection as one matrix product
  a seed at a time, then a numba loop; its backward takes the projection's adjoint inside);
- anything else (a GPU, float64): ``torch.nn.LSTM`` (cuDNN on a GPU) called per seed on the seed's weights.
Both carry an (h, c) state across calls, so a long video can go through in pieces (streaming, scoring).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

LSTMState = tuple[Tensor, Tensor]
"""(h, c), each of shape `(S, B, H)`."""

# Time steps that go through the front-end together when no gradient is kept: a piece's activations stay in cache.
INFERENCE_PIECE = 1024

NOISE_RANGE = 3.0
"""Bound of the per-frame observation-noise offset u_t = NOISE_RANGE * tanh(raw) (learned observation noise): R_t's
diagonal softplus(r + u_t) then lies within about e^-3 and e^3 times the fixed noise softplus(r)."""


class FusedLSTM(torch.autograd.Function):
    """S LSTMs, compiled (`affect_core._seed_lstm`), float32 CPU tensors.

    Inputs: the layer below, transposed, shape `(S, D, B*T)` (row b*T + t is frame t of sequence b); w_ih
    `(S, 4H, D)`; w_hh `(S, 4H, H)`; bias `(S, 4H)` (both LSTM biases); h0, c0 `(S, B, H)`; save (keep what the
    backward pass reads: pass `torch.is_grad_enabled()`). Outputs: hidden states `(S, B, T, H)` and the last cell
    state `(S, B, H)`. The forward runs a seed at a time: its input projections as one matrix product (which stays in
    cache), then `recurrent_forward`; the backward (`fused_backward`) takes the projection's adjoint inside, so the
    `(S, B, T, 4H)` gate adjoints are never written to memory.
    """

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, h0: Tensor, c0: Tensor, save: bool):  # type: ignore[override]
        from affect_core import _seed_lstm
        from affect_core.filters.compiled import batch_slices, run_slices

        seeds, batch, size = h0.shape
        steps = inputs.shape[-1] // batch
        kept = steps if save else 1
        acts = np.empty((seeds, batch, kept, 4 * size), dtype=np.float32)
        cells = np.empty((seeds, batch, kept, size), dtype=np.float32)
        tanh_cells = np.empty((seeds, batch, kept, size), dtype=np.float32)
        hidden = np.empty((seeds, batch, steps, size), dtype=np.float32)
        recurrent = w_hh.detach().contiguous().numpy()
        h_start, c_start = h0.detach().contiguous().numpy(), c0.detach().contiguous().numpy()
        x, w_in, b_in = inputs.detach(), w_ih.detach(), bias.detach()  # the pool's threads record no graph either

        def run(part: slice) -> None:
            for s in range(seeds)[part]:
                pre = torch.addmm(b_in[s], x[s].T, w_in[s].T).numpy()  # (B*T, 4H)
                _seed_lstm.recurrent_forward(
                    pre, recurrent[s], h_start[s], c_start[s], acts[s], cells[s], tanh_cells[s], hidden[s]
                )

        run_slices(run, batch_slices(seeds))
        acts_t, cells_t, tanh_t, hidden_t = (torch.from_numpy(a) for a in (acts, cells, tanh_cells, hidden))
        ctx.save_for_backward(inputs, w_ih, w_hh, acts_t, cells_t, tanh_t, hidden_t)
        ctx.start = (h_start, c_start)
        last_cell = cells_t[:, :, -1].clone()
        ctx.mark_non_differentiable(last_cell)
        return hidden_t, last_cell

    @staticmethod
    def backward(ctx: Any, g_hidden: Tensor, g_last_cell: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        from affect_core import _seed_lstm
        from affect_core.filters.compiled import batch_slices, run_slices

        inputs, w_ih, w_hh, *saved = (t.detach().contiguous().numpy() for t in ctx.saved_tensors)
        g = g_hidden.contiguous().numpy()
        h0, c0 = ctx.start
        outputs = run_slices(
            lambda s: _seed_lstm.fused_backward(
                g[s], inputs[s], w_ih[s], w_hh[s], h0[s], c0[s], *(a[s] for a in saved)
            ),
            batch_slices(g_hidden.shape[0]),
        )
        g_inputs, g_w_ih, g_w_hh, g_bias = (_joined([o[i] for o in outputs]) for i in range(4))
        return g_inputs, g_w_ih, g_w_hh, g_bias, None, None, None


def _joined(parts: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))


def compiled_lstm_applies(tensor: Tensor) -> bool:
    """The numba kernels serve float32 CPU tensors."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32


def lstm_hidden(
    inputs: Tensor,
    weights: dict[str, Tensor],
    batch: int,
    state: LSTMState | None,
    template: nn.LSTM,
) -> tuple[Tensor, LSTMState]:
    """The S LSTMs over B sequences: the one place that picks the recurrence's implementation.

    Args:
        inputs: The layer below, transposed. Shape should be `(S, D, B*T)`.
        weights: ``weight_ih`` `(S, 4H, D)`, ``weight_hh`` `(S, 4H, H)`, ``bias_ih`` and ``bias_hh`` `(S, 4H)`.
        batch: B.
        state: (h, c) `(S, B, H)` each to start from, or None for zeros.
        template: an ``nn.LSTM`` of the right sizes whose own weights are never used (the per-seed path calls it with
            the seed's weights).

    Returns:
        Hidden states `(S, B, T, H)` and the last (h, c).
    """
    seeds, width, rows = inputs.shape
    size = weights["weight_hh"].shape[-1]
    steps = rows // batch
    if state is None:
        zeros = inputs.new_zeros((seeds, batch, size))
        state = (zeros, zeros)
    if compiled_lstm_applies(inputs):
        bias = weights["bias_ih"] + weights["bias_hh"]
        hidden, last_c = FusedLSTM.apply(
            inputs.contiguous(),
            weights["weight_ih"],
            weights["weight_hh"],
            bias,
            state[0],
            state[1],
            torch.is_grad_enabled(),
        )
        return hidden, (hidden[:, :, -1].detach(), last_c)
    outs, hs, cs = [], [], []
    for s in range(seeds):
        seed_weights = {f"{name}_l0": value[s] for name, value in weights.items()}
        x = inputs[s].T.reshape(batch, steps, width)
        out, (h_n, c_n) = functional_call(template, seed_weights, (x, (state[0][s : s + 1], state[1][s : s + 1])))
        outs.append(out)
        hs.append(h_n[0])
        cs.append(c_n[0])
    return torch.stack(outs), (torch.stack(hs).detach(), torch.stack(cs).detach())


class FrontEnd(nn.Module):
    """S front-ends: features (B, T, d) or (S, B, T, d) and a mask -> observations (S, B, T, m).

    Parameters (S = seeds): ``ff{j}_weight`` `(S, out, in)` and ``ff{j}_bias`` `(S, out)` per feed-forward layer (the
    first layer's last input column is the mask channel); ``lstm_weight_ih`` `(S, 4H, in)`, ``lstm_weight_hh``
    `(S, 4H, H)`, ``lstm_bias_ih``, ``lstm_bias_hh`` `(S, 4H)`; ``head_weight`` `(S, m, H)`, ``head_bias`` `(S, m)`.
    A seed's initial values are those of ``nn.Linear`` / ``nn.LSTM`` layers built in this order after
    ``torch.manual_seed(seed)``.

    With ``noise_dim`` > 0 (learned observation noise, the "virtual sensor") the head has ``output_dim + noise_dim``
    rows: the first ``output_dim`` are the observations o_t (tanh), the other ``noise_dim`` the per-frame noise offsets
    u_t = NOISE_RANGE * tanh(raw). The noise rows start at zero (weights and bias), so an untrained model observes and
    filters exactly as a fixed-noise one drawn from the same seed.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: tuple[int, ...],
        lstm_size: int,
        output_dim: int,
        seeds: list[int | None],
        noise_dim: int = 0,
    ) -> None:
        super().__init__()
        self.layers = len(hidden_sizes)
        self.lstm_size = lstm_size
        self.output_dim = output_dim
        self.noise_dim = noise_dim
        per_seed: list[dict[str, Tensor]] = []
        for seed in seeds:
            if seed is not None:
                torch.manual_seed(seed)
            tensors: dict[str, Tensor] = {}
            width = input_dim + 1
            for j, size in enumerate(hidden_sizes):
                layer = nn.Linear(width, size)
                tensors[f"ff{j}_weight"], tensors[f"ff{j}_bias"] = layer.weight, layer.bias
                width = size
            lstm = nn.LSTM(width, lstm_size, batch_first=True)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                tensors[f"lstm_{name}"] = getattr(lstm, f"{name}_l0")
            head = nn.Linear(lstm_size, output_dim)
            tensors["head_weight"], tensors["head_bias"] = head.weight, head.bias
            if noise_dim:  # zero rows after the drawn ones: the random state and the observation rows as without them
                tensors["head_weight"] = torch.cat([head.weight.detach(), head.weight.new_zeros(noise_dim, lstm_size)])
                tensors["head_bias"] = torch.cat([head.bias.detach(), head.bias.new_zeros(noise_dim)])
            per_seed.append(tensors)
        # The per-seed LSTM path calls this module with a seed's weights; its own are never used.
        # Kept out of the module's registry: not a parameter of the model, not in its state.
        with torch.random.fork_rng(devices=[]):  # drawing its unused weights leaves the random state alone
            self._lstm_template = [nn.LSTM(width, lstm_size, batch_first=True)]
        for name in per_seed[0]:
            stacked = torch.stack([t[name].detach() for t in per_seed])
            self.register_parameter(name, nn.Parameter(stacked))
        for p in self._lstm_template[0].parameters():
            p.requires_grad_(False)

    @property
    def seeds(self) -> int:
        return int(self.head_bias.shape[0])

    def forward(self, x: Tensor, observed: Tensor | None, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Observations of every seed.

        Args:
            x: Features with zeros where ``observed`` is False. Shape should be `(B, T, d)` (one input for every seed)
                or `(S, B, T, d)`.
            observed: Bool, True where the frame has a face; shape `(B, T)` or `(S, B, T)`; None: every frame.
            state: The LSTM's (h, c) `(S, B, H)` after the frames before these, or None at a sequence's start.

        Returns:
            Observations `(S, B, T, m)` and the LSTM's (h, c) after the last frame.
        """
        steps = x.shape[-2]
        if not torch.is_grad_enabled() and steps > INFERENCE_PIECE and self.seeds == 1:
            # Without gradients (scoring) the time axis goes through in pieces, the LSTM's state carried across (it is
            # causal: the same result); the pieces' activations stay in cache, where the whole batch's would not.
            # Several seeds (training's dev metric) gain nothing: each piece costs a product per seed.
            pieces = []
            for start in range(0, steps, INFERENCE_PIECE):
                part = slice(start, start + INFERENCE_PIECE)
                piece_mask = None if observed is None else observed[..., part]
                o, state = self._forward(x[..., part, :], piece_mask, state)
                pieces.append(o)
            return torch.cat(pieces, dim=2), state  # type: ignore[return-value]
        return self._forward(x, observed, state)

    def _forward(self, x: Tensor, observed: Tensor | None, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        S = self.seeds
        batch, steps = x.shape[-3], x.shape[-2]
        rows = batch * steps
        h = self._input_layers(x, observed)  # (S, width, B*T)
        weights = {name: getattr(self, f"lstm_{name}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        hidden, state = lstm_hidden(h, weights, batch, state, self._lstm_template[0])
        hidden = hidden.reshape(S, rows, self.lstm_size)
        raw = torch.baddbmm(self.head_bias.unsqueeze(1), hidden, self.head_weight.mT)
        if self.noise_dim:  # [o_t, u_t]: observations (tanh), then the bounded noise offsets
            m = self.output_dim
            o = torch.cat([torch.tanh(raw[..., :m]), NOISE_RANGE * torch.tanh(raw[..., m:])], dim=-1)
        else:
            o = torch.tanh(raw)
        return o.view(S, batch, steps, -1), state

    def _input_layers(self, x: Tensor, observed: Tensor | None) -> Tensor:
        """The layers before the LSTM on [x, mask], transposed: `(S, width, B*T)`.

        With one input for every seed, the mask is the input's last column (a copy of the small (B*T, d+1) input, where
        masking the (S*out, B*T) output would pass over every seed's activations); a frame without a face (zeros,
        mask 0) then gets the first layer's bias alone. With a fully observed batch the mask column is added with the
        bias."""
        S = self.seeds
        d = x.shape[-1]
        rows = x.shape[-3] * x.shape[-2]
        shared = x.dim() == 3
        flat = x.reshape(rows, d) if shared else x.reshape(S, rows, d)
        if self.layers == 0:  # the LSTM reads [x, mask] directly
            column = flat.new_ones(flat.shape[:-1]) if observed is None else observed.reshape(flat.shape[:-1])
            h = torch.cat([flat, column.to(flat.dtype).unsqueeze(-1)], dim=-1).mT
            return h.expand(S, d + 1, rows) if shared else h
        weight, bias = self.ff0_weight, self.ff0_bias  # (S, out, d+1), (S, out)
        features_w, mask_w = weight[..., :d], weight[..., d]
        present_bias = (bias + mask_w).unsqueeze(-1)  # (S, out, 1): a frame with a face
        if shared:  # every seed's first layer as one product (S*out, d) x (d, B*T)
            out = weight.shape[1]
            if observed is None:
                h = torch.addmm(present_bias.reshape(S * out, 1), features_w.reshape(S * out, d), flat.T)
            else:
                # x is zero on a frame without a face, so W [x; m] + b = W_x x + (b + w_m) - w_m (1 - m): the mask
                # column's term as one rank-1 update of the (S*out, B*T) output, no copy of the (large) input.
                absent = (~observed.reshape(rows)).to(flat.dtype)
                h = torch.addmm(present_bias.reshape(S * out, 1), features_w.reshape(S * out, d), flat.T)
                h = torch.addr(h, mask_w.reshape(S * out), absent, alpha=-1)
            # ReLU in place before the view: in place on the view, autograd would copy the activations.
            h = torch.relu_(h).view(S, out, rows)
        else:
            h = torch.baddbmm(present_bias, features_w, flat.mT)
            if observed is not None:
                absent = ~observed.reshape(S, rows)
                h = torch.where(absent.unsqueeze(-2), bias.unsqueeze(-1), h)
            h = torch.relu_(h)
        for j in range(1, self.layers):
            h = torch.relu_(
                torch.baddbmm(getattr(self, f"ff{j}_bias").unsqueeze(-1), getattr(self, f"ff{j}_weight"), h)
            )
        return h
