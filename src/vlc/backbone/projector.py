"""The shared projector from encoder width to LLM width (LLaVA's mlp2x_gelu)."""

from __future__ import annotations

from torch import Tensor, nn


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:  # (..., Dv) → (..., D)
        return self.net(x)
