"""Position encodings for the flattened feature map: fixed sine (default) or learned."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of pixel coordinates, as in "Attention is all you need".

    Coordinates are cumulative counts of valid (unpadded) pixels, normalised to
    [0, scale] per image, so padding does not shift the encoding of real pixels.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B, H, W] (True on padding) -> encoding [B, 2 * num_pos_feats, H, W] float32."""
        valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale
        x = x / (x[:, :, -1:] + eps) * self.scale

        freq = sine_frequencies(self.num_pos_feats, self.temperature, mask.device)  # [n]
        return torch.cat([interleave_sin_cos(y[..., None] / freq), interleave_sin_cos(x[..., None] / freq)],
                         dim=3).permute(0, 3, 1, 2)


def sine_frequencies(n: int, temperature: float, device: torch.device) -> Tensor:
    """[n] float32 divisors of the sine encoding: temperature^(2 floor(i / 2) / n)."""
    freq = torch.arange(n, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / n)


def interleave_sin_cos(angles: Tensor) -> Tensor:
    """[..., n] -> [..., n]: sin of the even channels and cos of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute row and column embeddings (at most `max_size` cells per side)."""

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B, H, W] -> encoding [B, 2 * num_pos_feats, H, W]."""
        b, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f"learned position embedding covers at most {self.max_size}x{self.max_size} feature cells, "
                f"got {h}x{w}; use position_embedding='sine' or smaller images"
            )
        cols = self.col_embed(torch.arange(w, device=mask.device))  # [W, n]
        rows = self.row_embed(torch.arange(h, device=mask.device))  # [H, n]
        pos = torch.cat([cols[None].expand(h, w, -1), rows[:, None].expand(h, w, -1)], dim=-1)  # [H, W, 2n]
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)


def build_position_embedding(kind: str, hidden_dim: int) -> nn.Module:
    """`kind` is "sine" or "learned" (the official aliases "v2" / "v3" are accepted)."""
    if kind in ("sine", "v2"):
        return PositionEmbeddingSine(hidden_dim // 2)
    if kind in ("learned", "v3"):
        return PositionEmbeddingLearned(hidden_dim // 2)
    raise ValueError(f"position_embedding must be 'sine' or 'learned', got {kind!r}")
