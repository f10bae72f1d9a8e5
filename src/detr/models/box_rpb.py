"""Plain DETR's box-to-pixel relative position bias (BoxRPB; Lin et al., ICCV 2023, arXiv 2308.01904).

A bias added to each head's cross-attention logits of a query at every feature cell, from the offsets of the
query's box corners to the cell's centre, decomposed in x and y as impiga/Plain-DETR
(models/global_rpe_decomp_decoder.py, `GlobalCrossAttention`, rpe_type "linear"):

    dx = (x0 - px, x1 - px), dy = (y0 - py, y1 - py)   in input pixels
    bias[head, query, (i, j)] = mlp_y(dy_i)[head] + mlp_x(dx_j)[head]

with each MLP Linear(2, hidden) -> ReLU -> Linear(hidden, heads, no bias), px = (j + 0.5) * stride, and the box
(normalised to the image's unpadded size) scaled by the image's unpadded cells times the stride.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Plain DETR's --decoder_rpe_hidden_dim.
HIDDEN = 512


def _mlp(heads: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, heads, bias=False))


class BoxRPB(nn.Module):
    """The bias of one decoder layer's cross-attention: boxes -> [B, heads, Q, h*w]."""

    def __init__(self, heads: int, stride: int, hidden: int = HIDDEN):
        super().__init__()
        self.stride = stride
        self.mlp_x, self.mlp_y = _mlp(heads, hidden), _mlp(heads, hidden)

    def forward(self, boxes: Tensor, valid: Tensor, grid: tuple[int, int]) -> Tensor:
        """boxes [B, Q, 4] cxcywh in [0, 1] of each image's unpadded part; valid [B, 2] its unpadded (rows, columns)
        of the feature map; grid (h, w): the (padded) feature map's size -> bias [B, heads, Q, h*w]."""
        h, w = grid
        s = self.stride
        rows, cols = valid.to(boxes.dtype).unbind(-1)  # [B]
        cx, cy, bw, bh = boxes.unbind(-1)  # [B, Q]
        x = torch.stack([cx - bw / 2, cx + bw / 2], -1) * (cols * s)[:, None, None]  # [B, Q, 2] pixels
        y = torch.stack([cy - bh / 2, cy + bh / 2], -1) * (rows * s)[:, None, None]
        px = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * s  # [w]
        py = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * s  # [h]
        bias_x = self.mlp_x(x[:, :, None, :] - px[None, None, :, None])  # [B, Q, w, heads]
        bias_y = self.mlp_y(y[:, :, None, :] - py[None, None, :, None])  # [B, Q, h, heads]
        bias = bias_y[:, :, :, None] + bias_x[:, :, None]  # [B, Q, h, w, heads]
        return bias.flatten(2, 3).permute(0, 3, 1, 2)  # [B, heads, Q, h*w]


def valid_cells(mask: Tensor) -> Tensor:
    """The unpadded (rows, columns) [B, 2] of each image of a padding mask [B, h, w] (True on padding, which is
    bottom and right)."""
    return torch.stack([(~mask[:, :, 0]).sum(1), (~mask[:, 0, :]).sum(1)], -1)


def backbone_stride(backbone: str, dilation: bool) -> int:
    """The feature stride of a backbone: 32 for a ResNet, 16 with DC5 or for the tiny trunk."""
    return 16 if dilation or backbone == "tiny" else 32
