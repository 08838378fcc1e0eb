"""The ``colour-stats`` encoder: six colour statistics of a tile, the simplest image anchor.

Its pooled feature is the mean and the standard deviation of R, G and B over the whole tile
(pixel values in [0, 1]), in the order (mean R, mean G, mean B, std R, std G, std B).  On HER2ST
a ridge regression on these six numbers of the spot-centred 224-px crop is a strong baseline
(``../shared/data/README.md``), so it is a row of every model table: a model that does not beat
it clearly has learnt little beyond colour.

It follows timm's feature interface like :mod:`napari_dkan.features.tiny`, so it runs through
the feature cache and every engine model unchanged.  Its feature map is the per-pixel (x, x²)
pair: average-pooling that map gives the first and second moments from which the statistics
follow (the 7×7 token grid is each cell's moments).
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 6


class ColourStats(nn.Module):
    """Tile (B×3×H×W, values in [0, 1]) → (B×6) mean and std of each channel; no weights."""

    num_features = WIDTH

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()  # float32 moments lose the std of flat tiles to cancellation
        return torch.cat([x, x * x], dim=1)  # B×6×H×W: first and second moments per pixel

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        moments = x.double().mean(dim=(2, 3))
        mean, square = moments[:, :3], moments[:, 3:]
        std = (square - mean * mean).clamp_min(0.0).sqrt()
        return torch.cat([mean, std], dim=1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
