"""The ``tiny`` encoder: a two-layer random CNN for tests and quick trials (features carry no
meaning).  It follows timm's feature interface (``num_features``, ``forward_features``,
``forward_head(pre_logits=True)``), so it runs through exactly the code real encoders use, at a
small fraction of the cost of even timm's test models."""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 32


class TinyCNN(nn.Module):
    """224 px → (conv 8×8 stride 8, GELU, conv 4×4 stride 4) → a 7×7×32 feature map."""

    num_features = WIDTH

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.act = nn.GELU()
        self.proj = nn.Conv2d(16, WIDTH, kernel_size=4, stride=4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
