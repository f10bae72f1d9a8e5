"""Attention maps of a detection, as in the paper's figures.

- decoder: for each detected object, the last decoder layer's cross-attention of its query
  over the encoder's feature map (head-averaged), which lights up the object's extremities
  (Conditional DETR: the attention of its content-and-spatial query over content-and-position keys);
- encoder: the last encoder layer's self-attention of one feature cell (at a chosen pixel)
  over all cells, which separates object instances.

Forward hooks capture the attention modules' inputs during one ordinary forward pass; the
weights are then computed by the modules' own `attention_weights`. The model is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .detector import Detections, Detector, ImageInput, to_image_tensor
from .visualize import draw_detections, mark_point, overlay_heatmap


@dataclass
class AttentionMaps:
    """What one image's detection looked at.

    Attributes:
        detections: the image's detections (object k is `detections.*[k]`).
        decoder: [N, h, w] cross-attention of each detection's query over the feature map.
        encoder: [h, w] self-attention of the feature cell under `pixel`.
        pixel: (x, y) in original image pixels that `encoder` is for.
        feature_size: (h, w) of the feature map (stride 32, or 16 for DC5).
    """

    detections: Detections
    decoder: Tensor
    encoder: Tensor
    pixel: tuple[int, int]
    feature_size: tuple[int, int]


def _capture_inputs(module: nn.Module, store: dict[str, Any], name: str) -> Any:
    """Keep `(query, key, key_padding_mask)` of every call of an Attention module."""

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        mask = args[3] if len(args) > 3 else kwargs.get("key_padding_mask")
        store[name] = (args[0], args[1], mask)

    return module.register_forward_hook(hook, with_kwargs=True)


def explain(detector: Detector, image: ImageInput, pixel: tuple[int, int] | None = None,
            threshold: float | None = None) -> AttentionMaps:
    """Detect objects in one image and return the attention maps behind them.

    Args:
        detector: a loaded Detector.
        image: one image (path, PIL, numpy, tensor).
        pixel: (x, y) in original image pixels for the encoder map; default: the centre of
            the best detection, or of the image when nothing is detected.
        threshold: overrides the detector's threshold.

    Returns:
        The detections with their decoder maps and the encoder map at `pixel`.
    """
    img = to_image_tensor(image)
    height, width = img.shape[1:]
    store: dict[str, Any] = {}
    model = detector.model
    cross = _cross_attention(model)
    handles = [
        _capture_inputs(cross, store, "decoder"),
        _capture_inputs(model.transformer.encoder.layers[-1].self_attn, store, "encoder"),
        model.backbone.register_forward_hook(lambda m, a, out: store.__setitem__("features", out[0].shape[-2:])),
    ]
    try:
        found = detector.detect([img], detector.threshold if threshold is None else threshold)[0]
    finally:
        for h in handles:
            h.remove()
    fh, fw = (int(v) for v in store["features"])
    if pixel is None:
        pixel = _default_pixel(found, width, height)
    check_pixel(pixel, width, height)
    decoder = _weights(cross, store["decoder"])  # [Q, h*w]
    encoder = _weights(model.transformer.encoder.layers[-1].self_attn, store["encoder"])  # [h*w, h*w]
    cell = min(int(pixel[1] * fh / height), fh - 1) * fw + min(int(pixel[0] * fw / width), fw - 1)
    return AttentionMaps(found, decoder[found.queries.to(decoder.device)].reshape(-1, fh, fw).cpu(),
                         encoder[cell].reshape(fh, fw).cpu(), pixel, (fh, fw))


def _cross_attention(model: nn.Module) -> nn.Module:
    """The last decoder layer's cross-attention: `multihead_attn` (DETR) or `cross_attn` (Conditional DETR)."""
    layer = model.transformer.decoder.layers[-1]
    return layer.cross_attn if hasattr(layer, "cross_attn") else layer.multihead_attn


def _weights(module: Callable[..., Any], inputs: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
    """Head-averaged attention weights of the first (only) image: [L, S]."""
    query, key, mask = inputs
    return module.attention_weights(query, key, mask)[0].float()


def _default_pixel(found: Detections, width: int, height: int) -> tuple[int, int]:
    if len(found):
        x0, y0, x1, y1 = found.boxes[0].tolist()
        return (min(max(round((x0 + x1) / 2), 0), width - 1), min(max(round((y0 + y1) / 2), 0), height - 1))
    return width // 2, height // 2


def check_pixel(pixel: tuple[int, int], width: int, height: int) -> None:
    """A ValueError unless `pixel` (x, y) lies inside a width x height image."""
    x, y = pixel
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"pixel ({x}, {y}) is outside the image of {width}x{height} pixels "
                         f"(x in [0, {width - 1}], y in [0, {height - 1}])")


def parse_pixel(text: str) -> tuple[int, int]:
    """'x,y' -> (x, y) integers, or a ValueError saying what is expected."""
    parts = text.replace(" ", "").split(",")
    try:
        x, y = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--pixel: expected two integers as x,y (e.g. 120,80), got {text!r}") from None
    return x, y


def save_attention_pictures(image: Image.Image, maps: AttentionMaps, folder: str | os.PathLike) -> list[Path]:
    """Write one PNG per detected object (decoder map) and one for the encoder map.

    Every picture has the original image's size: the map is upsampled onto the image,
    with the object's box (decoder) or the chosen pixel (encoder) drawn on top.

    Returns:
        The written paths: `object_<k>_<name>.png` ... then `encoder_<x>_<y>.png`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    det = maps.detections
    paths = []
    for k in range(len(det)):
        one = Detections(det.boxes[k:k + 1], det.scores[k:k + 1], det.labels[k:k + 1], det.names[k:k + 1],
                         det.image_size, det.queries[k:k + 1])
        picture = draw_detections(overlay_heatmap(image, maps.decoder[k].numpy()), one)
        safe = "".join(c if c.isalnum() else "_" for c in det.names[k])
        paths.append(folder / f"object_{k:02d}_{safe}.png")
        picture.save(paths[-1])
    x, y = maps.pixel
    picture = mark_point(overlay_heatmap(image, maps.encoder.numpy()), (x, y), f"({x}, {y})")
    paths.append(folder / f"encoder_{x}_{y}.png")
    picture.save(paths[-1])
    return paths


def rgb_image(image: ImageInput) -> Image.Image:
    """Any supported image as an RGB PIL image (what `explain` and `detr predict` draw on)."""
    img = to_image_tensor(image)
    if img.is_floating_point():
        img = (img * 255).round().to(torch.uint8)
    return Image.fromarray(img.permute(1, 2, 0).numpy())
