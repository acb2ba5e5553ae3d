"""Robotics parts: a sensor projector (readings in as tokens) and an action head (actions out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SensorProjector(nn.Module):
    """`sensor_projector`: sensor_values [1, dim] -> sensor_embeds [1, n_tokens, d_dec].

    `linear`: one Linear to n_tokens * d_dec; `mlp`: Linear, GELU, Linear.
    """

    def __init__(self, dim: int, n_tokens: int, d_out: int, kind: str, hidden: int,
                 device=None) -> None:
        super().__init__()
        if kind == "linear":
            self.linear = nn.Linear(dim, n_tokens * d_out, device=device)
        elif kind == "mlp":
            self.fc1 = nn.Linear(dim, hidden, device=device)
            self.fc2 = nn.Linear(hidden, n_tokens * d_out, device=device)
        else:
            raise ValueError(f"unknown sensor projector {kind!r}; expected linear or mlp")
        self.kind, self.n_tokens, self.d_out = kind, n_tokens, d_out

    def forward(self, sensor_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            x = self.linear(sensor_values)
        else:
            x = self.fc2(F.gelu(self.fc1(sensor_values)))
        return x.reshape(x.shape[0], self.n_tokens, self.d_out)


class ActionHead(nn.Module):
    """`action_head`: hidden_states [1, d_dec] -> actions [1, horizon, dim] (MLP regression:
    Linear, GELU, Linear; the decoder's last hidden state after its final norm goes in)."""

    def __init__(self, d_in: int, hidden: int, horizon: int, dim: int, device=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, device=device)
        self.fc2 = nn.Linear(hidden, horizon * dim, device=device)
        self.horizon, self.dim = horizon, dim

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(hidden_states)))
        return x.reshape(x.shape[0], self.horizon, self.dim)
