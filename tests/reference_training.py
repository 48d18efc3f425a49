"""An independent, plain statement of one seed's training, the oracle of the training loop's tests.

One model of torch.nn layers ([x, mask] -> Linear+ReLU -> Linear+ReLU -> nn.LSTM -> Linear+tanh), the library's
filter and alignment modules, Adam with the alignment's own learning rate, gradient clipping, the loss (17) and early
stopping on the mean dev CCC computed video by video: the paper's recipe written without the training loop's seed axis,
compiled kernels or batched evaluation.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from affect_core.config import RunConfig
from affect_core.losses import affect_loss
from affect_core.metrics import average_over_sequences, sequence_metrics
from affect_core.model import AffectModel, bounded_state
from affect_core.training import epoch_batches, prepare_training


class ReferenceModel(nn.Module):
    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        m = config.model
        layers: list[nn.Module] = []
        width = m.input_dim + 1
        for size in m.hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.feed_forward = nn.Sequential(*layers)
        self.lstm = nn.LSTM(width, m.lstm_size, batch_first=True)
        self.head = nn.Linear(m.lstm_size, 3 * m.num_dims)
        stages = AffectModel(m)  # the filter and alignment modules (no random draws)
        self.filter = stages.filters[0] if stages.filters else None
        self.smoothing = stages.smoothing
        self.alignment = stages.alignments[0] if stages.alignments else None

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d); observed: the frames with a face, as a training batch gives them (its x then holds zeros on
        the others); None: found here from NaN rows."""
        if observed is None:
            observed = torch.isfinite(x).all(-1)
        h = torch.cat(
            [torch.nan_to_num(x.masked_fill(~observed.unsqueeze(-1), 0.0)), observed.unsqueeze(-1).float()], -1
        )
        o = torch.tanh(self.head(self.lstm(self.feed_forward(h))[0]))
        if self.filter is not None:
            z = self.filter(o, mask=observed).states
        else:
            z = self.smoothing(o)
        return bounded_state(z if self.alignment is None else self.alignment(z))  # the output map, last


def dev_ccc(model: ReferenceModel, transform, videos, dims) -> float:
    rows = {d: [] for d in dims}
    with torch.no_grad():
        for video in videos:
            y = model(torch.from_numpy(transform.apply(video.features)).unsqueeze(0))[0, :, 0::3].numpy()
            for j, dim in enumerate(dims):
                gold = video.labels(dim)
                if gold is not None and np.isfinite(gold).any():
                    rows[dim].append(sequence_metrics(y[:, j], gold))
    values = [average_over_sequences(r)["ccc"] for r in rows.values()]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else -math.inf


def train_reference(train, dev, config: RunConfig) -> tuple[list[tuple[int, float, float]], dict[str, torch.Tensor]]:
    """One seed trained the plain way. Returns the epoch records (epoch, train loss, dev CCC) and the best weights."""
    config = copy.deepcopy(config)
    transform, items, fps = prepare_training(train, config)
    hp = config.train
    torch.manual_seed(hp.seed)
    rng = np.random.default_rng(hp.seed)
    model = ReferenceModel(config)
    align = list(model.alignment.parameters()) if config.model.align == "adaptive" else []
    align_ids = {id(p) for p in align}
    groups = [{"params": [p for p in model.parameters() if id(p) not in align_ids], "lr": hp.lr}]
    if align:
        groups.append({"params": align, "lr": hp.lr_align})
    optimizer = torch.optim.Adam(groups, betas=hp.betas)
    history, best, best_state, bad = [], -math.inf, None, 0
    for epoch in range(1, hp.max_epochs + 1):
        losses = []
        for batch in epoch_batches(items, hp.window_frames, hp.batch_size, rng):
            optimizer.zero_grad()
            y = model(batch.x, batch.observed)
            loss = affect_loss(y, batch.labels, fps=fps, lambda1=hp.lambda1, lambda2=hp.lambda2)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        score = dev_ccc(model, transform, dev, config.model.affect_dimensions)
        history.append((epoch, float(np.mean(losses)), score))
        if score > best:
            best, bad, best_state = score, 0, copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= hp.patience:
                break
    return history, best_state
