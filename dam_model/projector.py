"""The release's `mlp_downsample` projector: 2x2 token merge (column-major order) -> LN -> Linear -> GELU -> Linear."""
from __future__ import annotations

import math

import torch
from torch import nn


def downsample_2x2(features: torch.Tensor) -> torch.Tensor:
    """Merge 2x2 patch blocks: [B, G*G, C] (row-major grid) -> [B, ceil(G/2)^2, 4C].

    Odd grids are zero-padded by a row at the bottom and a column at the right. Output token t = j * M + i for
    row pair i and column pair j (COLUMN-major, as the released weights expect); channel chunks in the order
    x(2i, 2j), x(2i, 2j+1), x(2i+1, 2j), x(2i+1, 2j+1). Works for odd and even grids.
    """
    b, n, c = features.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"downsample_2x2 needs a square token grid, got {n} tokens")
    grid = features.view(b, g, g, c)
    if g % 2:
        grid = nn.functional.pad(grid, (0, 0, 0, 1, 0, 1))  # zero column at the right, zero row at the bottom
        g += 1
    m = g // 2
    # [b, row pair i, row parity, col pair j, col parity, c] -> [b, j, i, row parity, col parity, c]
    blocks = grid.reshape(b, m, 2, m, 2, c).permute(0, 3, 1, 2, 4, 5)
    return blocks.reshape(b, m * m, 4 * c)


class DownSampleBlock(nn.Module):
    """Parameter-free layer 0 of the projector (no state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample_2x2(x)


class MultimodalProjector(nn.Module):
    """The `mm_projector/` component; keys `layers.1.*` (LayerNorm), `layers.2.*`, `layers.4.*` (Linear)."""

    def __init__(self, vision_hidden: int, llm_hidden: int):
        super().__init__()
        merged = 4 * vision_hidden
        self.layers = nn.Sequential(
            DownSampleBlock(),
            nn.LayerNorm(merged),
            nn.Linear(merged, llm_hidden),
            nn.GELU(),  # exact (erf) GELU
            nn.Linear(llm_hidden, llm_hidden),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, G*G, C_vision] -> [B, ceil(G/2)^2, C_llm]."""
        return self.layers(features.to(self.layers[2].weight.dtype))
