"""The PaddleDetection side of the Paddle alignment tests, run in its own process (never imported by pytest).

    python tests/helpers/paddle_worker.py OUT_DIR --depth 50 --protocol 4 --size 128 160

with paddlepaddle + paddledet on PYTHONPATH (tests/helpers/paddle_reference.py installs them apart). It builds
PaddleDetection's DETR the way `configs/detr/_base_/detr_r50.yml` does (ResNet variant b, 6+6 layers, 100
queries, 80 classes + background), moves every 1-D parameter and buffer (BatchNorm and LayerNorm weights,
biases, running statistics) away from its identity-like initial value, and writes into OUT_DIR:

- `detr.pdparams`: `paddle.save(model.state_dict())` with the given pickle protocol;
- `sliced.pdparams`: a small state dict in paddle's big-parameter layout (a parameter cut into `name@@.i`
  slices listed under `UnpackBigParamInfor@@`, which paddle only writes for parameters over 1 GiB), pickle
  protocol 3, and `sliced.npz`: what `paddle.load(..., return_numpy=True)` reads back from it;
- `reference.npz`: the input image, the eval-mode head outputs (batch 1, no mask: what PaddleDetection's eval
  passes), `DETRBBoxPostProcess`'s rows [label, score, x1, y1, x2, y2], and the head outputs for a batch of
  two (the second image smaller, zero-padded) run as PaddleDetection's eval runs it: without a mask.

It imports nothing from `detr`, and torch never shares its process.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import paddle
from ppdet.modeling.architectures.detr import DETR
from ppdet.modeling.backbones.resnet import ResNet
from ppdet.modeling.heads.detr_head import DETRHead
from ppdet.modeling.post_process import DETRBBoxPostProcess
from ppdet.modeling.transformers.detr_transformer import DETRTransformer


def build(depth: int) -> DETR:
    """DETR as configs/detr/_base_/detr_r50.yml builds it (any ResNet depth)."""
    backbone = ResNet(depth=depth, norm_type="bn", freeze_at=0, return_idx=[3], num_stages=4,
                      lr_mult_list=[0.0, 0.1, 0.1, 0.1])
    transformer = DETRTransformer(num_queries=100, position_embed_type="sine", nhead=8, num_encoder_layers=6,
                                  num_decoder_layers=6, dim_feedforward=2048, dropout=0.1, activation="relu",
                                  backbone_num_channels=2048)
    head = DETRHead(num_classes=80, hidden_dim=256, nhead=8, num_mlp_layers=3, loss=None)
    return DETR(backbone, transformer, head, post_process=DETRBBoxPostProcess(num_classes=80))


SHARPEN = 1.5


def perturb(model: DETR, rng: np.random.Generator, image: np.ndarray) -> None:
    """Every 1-D tensor away from its initial value, so that a name swapped or a bias dropped in the conversion
    shows in the outputs: norm scales in [0.5, 1.5], biases ~ N(0, 0.2); each BatchNorm's statistics are those
    of its input on `image` (the mean moved by up to 0.2 standard deviations, the variance scaled by 0.5-1.5),
    which keeps a random ResNet's activations near unit scale instead of growing stage by stage."""
    for name, tensor in model.state_dict().items():
        if tensor.ndim == 1 and not name.endswith(("_mean", "_variance")):
            scale = name.endswith(".weight")  # 1-D weights are BatchNorm / LayerNorm scales
            value = rng.uniform(0.5, 1.5, tensor.shape) if scale else rng.normal(0.0, 0.2, tensor.shape)
            tensor.set_value(value.astype("float32"))

    def calibrate(layer: paddle.nn.Layer, inputs: tuple) -> None:
        x = inputs[0].numpy()  # [B, C, H, W]
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)) + 1e-3
        layer._mean.set_value((mean + rng.uniform(-0.2, 0.2, mean.shape) * np.sqrt(var)).astype("float32"))
        layer._variance.set_value((var * rng.uniform(0.5, 1.5, var.shape)).astype("float32"))

    for name, tensor in model.state_dict().items():
        if name.endswith("attn.in_proj_weight"):  # [D, 3D]: q, k, v side by side
            d = tensor.shape[0]
            value = tensor.numpy()
            value[:, :2 * d] *= SHARPEN
            tensor.set_value(value)

    hooks = [layer.register_forward_pre_hook(calibrate) for layer in model.sublayers()
             if isinstance(layer, paddle.nn.BatchNorm2D)]
    with paddle.no_grad():
        model.backbone({"image": paddle.to_tensor(image)})
    for hook in hooks:
        hook.remove()


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A normalised image [1, 3, h, w] with structure at the backbone's stride (32 px blocks) plus pixel noise,
    so that the feature map's positions differ (white noise alone averages out over the receptive field)."""
    coarse = rng.normal(size=(1, 3, h // 32 + 1, w // 32 + 1))
    blocks = np.kron(coarse, np.ones((1, 1, 32, 32)))[:, :, :h, :w]
    return (1.5 * blocks + 0.5 * rng.normal(size=(1, 3, h, w))).astype("float32")


def write_sliced(out: Path, rng: np.random.Generator) -> None:
    """A state dict in paddle's big-parameter layout, and what paddle itself reads back from it."""
    big = rng.normal(size=(5, 6)).astype("float32")
    saved = {"small.weight": rng.normal(size=(3,)).astype("float32"),
             "big.weight@@.0": big.flatten()[:12], "big.weight@@.1": big.flatten()[12:24],
             "big.weight@@.2": big.flatten()[24:],
             "UnpackBigParamInfor@@": {"big.weight": {"OriginShape": (5, 6),
                                                     "slices": ["big.weight@@.0", "big.weight@@.1",
                                                                "big.weight@@.2"]}},
             "StructuredToParameterName@@": {"small.weight": "linear_0.w_0", "big.weight": "linear_1.w_0"}}
    with open(out / "sliced.pdparams", "wb") as f:
        pickle.dump(saved, f, protocol=3)
    loaded = paddle.load(str(out / "sliced.pdparams"), return_numpy=True)
    np.savez(out / "sliced.npz", **loaded)  # rejoined by paddle.load itself


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--protocol", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 160])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paddle.set_device("cpu")
    paddle.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    h, w = args.size
    model = build(args.depth)
    model.eval()
    perturb(model, rng, random_image(rng, h, w))
    paddle.save(model.state_dict(), str(args.out / "detr.pdparams"), protocol=args.protocol)

    image = random_image(rng, h, w)  # batch 1
    scale = np.array([[0.5, 0.5]], dtype="float32")  # the original image was twice as large
    inputs = {"image": paddle.to_tensor(image), "im_shape": paddle.to_tensor([[float(h), float(w)]]),
              "scale_factor": paddle.to_tensor(scale)}
    with paddle.no_grad():
        body = model.backbone(inputs)
        boxes, logits, _ = model.detr_head(model.transformer(body, None), body)  # [1, 100, 4], [1, 100, 81]
        rows, _ = model.post_process((boxes, logits, None), inputs["im_shape"], inputs["scale_factor"])
        # batch 2: a smaller image padded with zeros at the bottom / right (PadMaskBatch); eval passes no mask
        batch = np.zeros((2, 3, h, w), dtype="float32")
        batch[0], batch[1, :, : h * 3 // 4, : w * 3 // 4] = image[0], random_image(rng, h * 3 // 4, w * 3 // 4)[0]
        body = model.backbone({"image": paddle.to_tensor(batch)})
        batch_boxes, batch_logits, _ = model.detr_head(model.transformer(body, None), body)
    np.savez(args.out / "reference.npz", image=image[0], logits=logits.numpy(), boxes=boxes.numpy(),
             post=rows.numpy(), original_size=np.array([h / scale[0, 0], w / scale[0, 1]]),
             batch=batch, batch_logits=batch_logits.numpy(), batch_boxes=batch_boxes.numpy())
    write_sliced(args.out, rng)


if __name__ == "__main__":
    main()
