"""PaddleDetection's DETR weights (`.pdparams`) -> this package's (official) parameter names.

`read_pdparams` reads what `paddle.save(model.state_dict(), "x.pdparams")` writes, without paddle and without
running anything from the file: a pickle (protocol 2-4) of numpy arrays, plus two bookkeeping entries that
paddle's own `paddle.load` resolves (`paddle/framework/io.py`, `io_utils.py`):

- `StructuredToParameterName@@`: layer names -> paddle's internal tensor names (dropped);
- `UnpackBigParamInfor@@`: with protocols 2 and 3, a parameter over 1 GiB is saved flattened, cut into
  `name@@.0`, `name@@.1`, ... and listed here with its shape (the slices are joined back).

The unpickler rebuilds only numpy arrays of numbers, numpy scalars and plain containers; a file that names any
other Python object (`os.system`, a class...) is refused before that object is looked up, so nothing runs.

`convert_paddle_state_dict` maps PaddleDetection's names (`configs/detr/detr_r50_1x_coco.yml`) onto ours. The
architecture is the official one: ResNet variant "b" (stride on the 3x3 convolution, torchvision's), frozen
BatchNorm with eps 1e-5, the same sine positions, post-norm transformer, the last decoder layer's normed output
feeding the heads. PaddleDetection's eval passes no padding mask: at batch 1 (its configs) nothing is padded,
as in ours; at batch > 1 its padded images attend to the padding, which our model does when given a padded
[B, 3, H, W] tensor without a mask. ResNet variant "a" (stride on the 1x1 convolution) has the same shapes as
"b" and cannot be told from the weights; ResNet-vd, deformable convolutions, mask heads and ResNet-18/34 (whose
first block has a 1x1 shortcut, `res2a.short`, that torchvision's lacks) are refused by name.
Paddle stores Linear weights as [in, out]: they are transposed, chosen by name, never by shape.

Classes: PaddleDetection's COCO head has 80 contiguous classes + background (the last logit; its postprocess
takes the softmax over all 81 and drops the last). By default they become a 91-class head indexed by COCO
category id, like the official DETR weights: labels, names, `detr eval` on COCO annotations and fine-tuning
then work as with the official files. The 11 unused ids get a zero weight and a -1e4 bias, whose softmax
probability is exactly 0 in float32, bfloat16 and float16, so scores, boxes and labels are PaddleDetection's.
"""

from __future__ import annotations

import builtins
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import CheckpointError
from ..config import Config, DataConfig, ModelConfig
from ..registry import COCO_CLASSES
from .identify import config_from_checkpoint

log = logging.getLogger(__name__)

NAME_TABLE = "StructuredToParameterName@@"
BIG_PARAMS = "UnpackBigParamInfor@@"
_NUMERIC_KINDS = "biufc"  # bool, signed / unsigned integers, floats, complex: never objects or raw records

# numpy's own pickle helpers, taken from what numpy itself reduces to (their module moved in numpy 2).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]


class _Refused(Exception):
    """Raised inside the unpickler when the file names something that is not plain data."""


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise _Refused(f"an array of class {subtype!r}")
    return _RECONSTRUCT(np.ndarray, shape, dtype_code)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str) or np.dtype(spec).kind not in _NUMERIC_KINDS:
        raise _Refused(f"numpy dtype {spec!r} (only numbers are read)")
    return np.dtype(spec, align, copy)


def _scalar(dtype: Any, data: Any = None) -> Any:
    if isinstance(data, str):  # a Python 2 pickle's bytes, decoded as latin1
        data = data.encode("latin1")
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise _Refused(f"a numpy scalar of dtype {dtype!r}")
    return _SCALAR(dtype, data)


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """Protocol 2 writes bytes as `_codecs.encode(str, "latin1")`; nothing else is decoded."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_PLAIN = {name: getattr(builtins, name) for name in ("tuple", "list", "dict", "set", "frozenset")}
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(module, name): value for module in ("builtins", "__builtin__") for name, value in _PLAIN.items()},
    ("collections", "OrderedDict"): dict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


class _DataUnpickler(pickle.Unpickler):
    """Resolves only the names in `_ALLOWED`; every other global is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id (external object)")


def read_pdparams(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict in a `.pdparams` file written by `paddle.save`, as numpy arrays, without paddle.

    Args:
        path: the file (PaddleDetection's released weights, or any `paddle.save(layer.state_dict())`).

    Returns:
        Parameter name -> array, big parameters joined back from their slices.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a pickle of protocol 2-4, names a Python
            object other than numpy arrays and plain containers (refused without running it), or holds
            anything but arrays; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: .pdparams file not found")
    with open(path, "rb") as f:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80 or head[1] not in (2, 3, 4):
            kind = "a zip archive (a PyTorch checkpoint or .npz?)" if head == b"PK" else "not a pickle of protocol 2-4"
            raise CheckpointError(f"{path}: not a paddle.save .pdparams file: {kind if head else 'empty file'}")
        f.seek(0)
        try:
            obj = _DataUnpickler(f, encoding="latin1").load()
        except _Refused as e:
            raise CheckpointError(f"{path}: refused to load: it references {e}, not numpy arrays or plain "
                                  "containers, which could run code; nothing from it was run") from None
        except Exception as e:  # truncated or corrupt pickles raise EOFError, UnpicklingError, ValueError...
            raise CheckpointError(f"{path}: not a readable .pdparams file (truncated or corrupt?): "
                                  f"{type(e).__name__}: {str(e)[:200]}") from None
    try:
        return _state_dict(obj)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _state_dict(obj: Any) -> dict[str, np.ndarray]:
    """paddle.load's bookkeeping undone: name table dropped, big-parameter slices joined, (name, array) tuples
    (how `paddle.save` pickles tensors outside a state dict) unwrapped."""
    if not isinstance(obj, dict):
        raise TypeError(f"holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if k not in (NAME_TABLE, BIG_PARAMS)}
    for key, info in (obj.get(BIG_PARAMS) or {}).items():
        slices = info.get("slices", []) if isinstance(info, dict) else []
        missing = [s for s in slices if s not in state]
        if not slices or missing:
            raise ValueError(f"big parameter {key!r}: slices {missing or slices} are not in the file")
        flat = np.concatenate([np.asarray(state.pop(s)).ravel() for s in slices])
        state[key] = flat.reshape(tuple(info["OriginShape"]))
    out = {}
    for key, value in state.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            value = value[1]
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"entry {key!r} is a {type(value).__name__}, not a numeric array")
        out[key] = value
    return out


# PaddleDetection name -> ours, first match wins (keys of a `DETR(ResNet, DETRTransformer, DETRHead)` layer).
_BN = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}
_BRANCH = {"branch2a": "1", "branch2b": "2", "branch2c": "3"}


def _bn(param: str) -> str:
    if param not in _BN:
        raise ValueError(f"paddle state dict: unknown BatchNorm entry {param!r} (expected one of {sorted(_BN)})")
    return _BN[param]


def _block(m: re.Match) -> str:
    """res{stage}{block}.{branch}.{conv|norm}.{param} -> torchvision's layer{stage-1}.{index}.{module}.{param}."""
    stage, letter, number, branch, kind, param = m.groups()
    index = int(number) if number else ord(letter) - ord("a")  # a, b, c...; ResNet-101/152 stage 4: a, b1, b2...
    if branch == "short":
        module = f"downsample.{0 if kind == 'conv' else 1}"
    else:
        module = f"{'conv' if kind == 'conv' else 'bn'}{_BRANCH[branch]}"
    return f"backbone.0.body.layer{int(stage) - 1}.{index}.{module}.{param if kind == 'conv' else _bn(param)}"


_RENAME: list[tuple[str, Any]] = [
    (r"^backbone\.conv1\.conv1\.conv\.weight$", lambda m: "backbone.0.body.conv1.weight"),
    (r"^backbone\.conv1\.conv1\.norm\.(\w+)$", lambda m: f"backbone.0.body.bn1.{_bn(m[1])}"),
    (r"^backbone\.res(\d)\.res\d([a-z])(\d*)\.(branch2[abc]|short)\.(conv|norm)\.(\w+)$", _block),
    (r"^transformer\.(en|de)coder\.layers\.(\d+)\.cross_attn\.(.+)$",
     lambda m: f"transformer.{m[1]}coder.layers.{m[2]}.multihead_attn.{m[3]}"),
    (r"^transformer\.((en|de)coder\.(layers\.\d+\.)?.+)$", lambda m: f"transformer.{m[1]}"),
    (r"^transformer\.input_proj\.(weight|bias)$", lambda m: f"input_proj.{m[1]}"),
    (r"^transformer\.query_pos_embed\.weight$", lambda m: "query_embed.weight"),
    (r"^transformer\.position_embedding\.(row|col)_embed\.weight$", lambda m: f"backbone.1.{m[1]}_embed.weight"),
    (r"^detr_head\.score_head\.(weight|bias)$", lambda m: f"class_embed.{m[1]}"),
    (r"^detr_head\.bbox_head\.layers\.(\d+)\.(weight|bias)$", lambda m: f"bbox_embed.layers.{m[1]}.{m[2]}"),
]
# Paddle Linear weights ([in, out], ours [out, in]); embeddings and convolutions keep their layout.
_LINEAR = re.compile(r"(_attn\.in_proj_weight|_attn\.out_proj\.weight|\.linear[12]\.weight|score_head\.weight"
                     r"|bbox_head\.layers\.\d+\.weight)$")
# Keys of variants our model cannot express, and why.
_UNSUPPORTED = [
    (r"^backbone\.conv1\.conv1_\d|\.short\.(pool|conv\.conv|conv\.norm)\.",
     "a ResNet-vd backbone (3-convolution stem, average-pooled shortcut), which torchvision's ResNet is not"),
    (r"^detr_head\.(bbox_attention|mask_head)\.", "a segmentation (mask) head"),
    (r"\.conv_offset\.", "deformable convolutions (dcn_v2) in the backbone"),
]
# PaddleDetection's ResNet-18/34 projects the shortcut of every stage's first block, res2a's (64 -> 64) too;
# torchvision's basic-block ResNet has no layer1.0.downsample.
_BASIC_FIRST_SHORTCUT = "backbone.0.body.layer1.0.downsample.0.weight"
_BOTTLENECK_KEY = "backbone.0.body.layer1.0.conv3.weight"
DEFAULT_NHEADS = 8  # PaddleDetection's DETR configs
_ABSENT_LOGIT = -1e4  # exp(-1e4) is 0 in float32, bfloat16 and float16 (whose range -1e4 still fits)


def coco_category_ids() -> list[int]:
    """The COCO category id of each of PaddleDetection's 80 contiguous classes (its `clsid2catid`)."""
    return [i for i, name in enumerate(COCO_CLASSES) if name != "N/A"]


def _our_name(key: str) -> str:
    for pattern, why in _UNSUPPORTED:
        if re.search(pattern, key):
            raise ValueError(f"paddle state dict: {key!r} belongs to {why}; only PaddleDetection's DETR with a "
                             "plain ResNet (variant b, as configs/detr/detr_r50_1x_coco.yml) converts")
    for pattern, rename in _RENAME:
        m = re.match(pattern, key)
        if m is not None:
            return rename(m)
    raise ValueError(f"paddle state dict: {key!r} is not a parameter of PaddleDetection's DETR "
                     "(backbone.*, transformer.*, detr_head.*)")


def _to_coco_ids(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """An 80 classes + background head [81, D] -> 91 category ids + "no object" [92, D] (see the module doc)."""
    rows = torch.tensor([*coco_category_ids(), len(COCO_CLASSES)])  # class i -> row; background -> 91
    new_weight = weight.new_zeros(len(COCO_CLASSES) + 1, weight.shape[1]).index_copy_(0, rows, weight)
    new_bias = bias.new_full((len(COCO_CLASSES) + 1,), _ABSENT_LOGIT).index_copy_(0, rows, bias)
    return new_weight, new_bias


def _maps_to_coco(classes: int, coco_ids: bool | None) -> bool:
    if coco_ids and classes != 80:
        raise ValueError(f"paddle state dict: coco_ids needs a head of 80 classes + background, this one has "
                         f"{classes} classes")
    return classes == 80 and coco_ids is not False


def _check_backbone(state: Mapping[str, Tensor]) -> None:
    """A ValueError for a basic-block ResNet (18/34) whose first block has a shortcut projection."""
    if _BASIC_FIRST_SHORTCUT in state and _BOTTLENECK_KEY not in state:
        raise ValueError("paddle state dict: 'backbone.res2.res2a.short.conv.weight' is the 1x1 shortcut of a "
                         "PaddleDetection ResNet-18/34's first block, which torchvision's ResNet-18/34 does not "
                         "have; only PaddleDetection's DETR with a ResNet-50/101 (variant b) converts")


def convert_paddle_state_dict(paddle_state: Mapping[str, Any], coco_ids: bool | None = None,
                              nheads: int = DEFAULT_NHEADS) -> tuple[dict[str, Tensor], ModelConfig]:
    """Map a PaddleDetection DETR state dict to this package's names, with its ModelConfig.

    Args:
        paddle_state: `read_pdparams(path)`, or `paddle_model.state_dict()` (paddle tensors or arrays).
        coco_ids: map 80 contiguous classes to a 91-class head indexed by COCO category id (see the module
            doc). None (default): when the head has 80 classes + background. False keeps the classes as
            they are (labels 0..C-1), for models trained on other data.
        nheads: attention heads (not in the weights; PaddleDetection's DETR uses 8).

    Returns:
        The state dict (loads strictly into `build_model(model_config)`) and the ModelConfig.

    Raises:
        ValueError: keys of another model or of a variant this package cannot express (ResNet-vd, ResNet-18/34,
            deformable convolutions, a mask head), a Linear weight that is not 2-D, or `nheads` that does not
            divide the width.
    """
    state: dict[str, Tensor] = {}
    for key, value in paddle_state.items():
        tensor = torch.tensor(np.asarray(value))
        if _LINEAR.search(key):
            if tensor.dim() != 2:
                raise ValueError(f"paddle state dict: {key!r} should be a Linear weight [in, out], got shape "
                                 f"{tuple(tensor.shape)}")
            tensor = tensor.t().contiguous()
        state[_our_name(key)] = tensor
    _check_backbone(state)
    if "class_embed.weight" in state and _maps_to_coco(state["class_embed.weight"].shape[0] - 1, coco_ids):
        state["class_embed.weight"], state["class_embed.bias"] = _to_coco_ids(
            state["class_embed.weight"], state["class_embed.bias"])
    config = config_from_checkpoint({"model": state}, "PaddleDetection DETR weights", nheads=nheads,
                                    dilation=False)  # PaddleDetection's ResNet has no dilated variant
    if nheads < 1 or config.model.hidden_dim % nheads:
        raise ValueError(f"nheads {nheads}: the weights' width {config.model.hidden_dim} is not divisible by it")
    return state, config.model


def load_pdparams(path: str | os.PathLike, coco_ids: bool | None = None, nheads: int | None = None
                  ) -> tuple[dict[str, Tensor], Config]:
    """A `.pdparams` file -> our state dict and Config (class names: COCO's when the head has 80 classes).

    `nheads` None: the weights cannot tell the head count, so PaddleDetection's default (8) is assumed and a
    warning says so and names the flag that decides (`--nheads`).

    Raises:
        CheckpointError: the file cannot be read safely, holds no PaddleDetection DETR weights, or holds a
            variant this package cannot express; the message names the file.
    """
    paddle_state = read_pdparams(path)
    if nheads is None:
        nheads = DEFAULT_NHEADS
        log.warning("%s: the number of attention heads cannot be told from PaddleDetection weights; assuming %d "
                    "(its DETR configs' default). For another head count pass --nheads N (Python: nheads=N)",
                    path, nheads)
    try:
        state, model_cfg = convert_paddle_state_dict(paddle_state, coco_ids=coco_ids, nheads=nheads)
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    head = paddle_state.get("detr_head.score_head.weight")  # [D, C + 1]
    if head is not None and _maps_to_coco(head.shape[1] - 1, coco_ids):
        names: list[str] | None = list(COCO_CLASSES)
    elif model_cfg.num_classes == 80:
        names = [COCO_CLASSES[i] for i in coco_category_ids()]  # kept contiguous: PaddleDetection's order
    else:
        names = None
    log.info("%s: PaddleDetection DETR, %s, %d heads, %d classes", path, model_cfg.backbone, model_cfg.nheads,
             model_cfg.num_classes)
    return state, Config(model=model_cfg, data=DataConfig(class_names=names))
