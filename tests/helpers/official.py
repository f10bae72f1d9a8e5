"""The official DETR code (registry package detr==0.1.4), installed apart and imported for side-by-side tests.

It installs top-level packages `models`, `util` and `datasets`, so it lives in its own folder
(never in the project's environment), installed from a wheel whose sha256 is checked first, and
is on sys.path only while `load()` imports it. Two things are neutralised from outside, without
editing its files:
- `float(torchvision.__version__[:3]) < 0.7` (reads "0.29.1" as 0.2) at import time;
- the ImageNet download its backbone asks for when `is_main_process()` is true.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import torch
import torchvision

REFERENCE_VERSION = "0.1.4"
REFERENCE_DIR = Path(os.environ.get("DETR_REFERENCE_DIR", Path(__file__).resolve().parents[2] / ".reference"))
# The registry's wheel of detr==0.1.4 (an upload of the official code by a third party), checked
# before it is installed or imported: sha256 of the file `pip download --no-deps detr==0.1.4` gave.
REFERENCE_WHEEL = f"detr-{REFERENCE_VERSION}-py3-none-any.whl"
REFERENCE_SHA256 = "bf23192f5969450b1494d44d7ae33f1a149251cd086a49f5a7c579a2f09750e5"
TOP_LEVEL = ("models", "util", "datasets")  # the reference's packages: importable only inside load()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_wheel() -> Path:
    """The verified wheel in REFERENCE_DIR, downloaded from the registry (no deps) if absent.

    Raises RuntimeError naming the file, the expected and the actual sha256 if it does not match.
    """
    wheel = REFERENCE_DIR / REFERENCE_WHEEL
    if not wheel.exists():
        REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=REFERENCE_DIR) as tmp:  # no half-downloaded wheel left behind
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                            ":all:", "--dest", tmp, f"detr=={REFERENCE_VERSION}"], check=True)
            got = sorted(p.name for p in Path(tmp).iterdir())
            if got != [REFERENCE_WHEEL]:
                raise RuntimeError(f"pip download detr=={REFERENCE_VERSION} gave {got}, expected [{REFERENCE_WHEEL!r}]")
            os.replace(Path(tmp) / REFERENCE_WHEEL, wheel)
    actual = _sha256(wheel)
    if actual != REFERENCE_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {actual} is not the recorded {REFERENCE_SHA256} of the official "
                           f"DETR wheel (detr=={REFERENCE_VERSION}); delete the file to download it again")
    return wheel


def _installed_matches(wheel: Path, target: Path) -> bool:
    """Every file the verified wheel's RECORD lists is in `target` with its recorded sha256."""
    with zipfile.ZipFile(wheel) as z:
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(z.read(record).decode().splitlines()))
    for name, digest, _size in rows:
        if not digest:  # RECORD lists itself without a hash
            continue
        algorithm, _, expected = digest.partition("=")
        path = target / name
        if algorithm != "sha256" or not path.is_file():
            return False
        actual = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        if actual != expected:
            return False
    return True


def ensure_installed() -> Path:
    """The official code in REFERENCE_DIR/detr-<version>, installed from the verified wheel.

    An existing install is kept when every file matches the verified wheel's RECORD; otherwise it
    is replaced (pip install --no-deps --no-index --target, from the local wheel file only).
    """
    wheel = reference_wheel()
    target = REFERENCE_DIR / f"detr-{REFERENCE_VERSION}"
    if target.exists() and _installed_matches(wheel, target):
        return target
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True)
    if not _installed_matches(wheel, target):
        raise RuntimeError(f"{target}: the files pip installed from {wheel} do not match its RECORD")
    return target


def _pop_top_level() -> dict[str, types.ModuleType]:
    """Remove (and return) the sys.modules entries of `models`, `util`, `datasets` and their submodules."""
    names = [n for n in sys.modules if n.split(".")[0] in TOP_LEVEL]
    return {n: sys.modules.pop(n) for n in names}


@functools.cache
def load() -> types.SimpleNamespace:
    """Import the official modules and return them as a namespace (one copy per process).

    Their folder is on sys.path only during the import, and their top-level packages are taken
    out of sys.modules again afterwards (anything of the same names imported before is put
    back), so nothing else in the process can import the reference's `models` or `util` by
    accident. The namespace keeps the module objects: use `ref.box_ops`, not `import util.box_ops`.
    """
    target = str(ensure_installed())
    others = _pop_top_level()
    sys.path.insert(0, target)
    real_version = torchvision.__version__
    torchvision.__version__ = "0.99"  # only for the import-time version check
    try:
        import models.backbone as backbone
        import models.detr as detr
        import models.matcher as matcher
        import models.position_encoding as position_encoding
        import models.segmentation as segmentation
        import models.transformer as transformer
        import util.box_ops as box_ops
        import util.misc as misc
    finally:
        torchvision.__version__ = real_version
        sys.path.remove(target)
        loaded = _pop_top_level()
        sys.modules.update(others)
    outside = sorted(n for n, m in loaded.items() if not (getattr(m, "__file__", None) or target).startswith(target))
    if outside:
        raise RuntimeError(f"importing the official code from {target} gave modules from elsewhere: {outside}")
    backbone.is_main_process = lambda: False  # never download ImageNet weights
    return types.SimpleNamespace(backbone=backbone, detr=detr, matcher=matcher, position_encoding=position_encoding,
                                 segmentation=segmentation, transformer=transformer, box_ops=box_ops, misc=misc)


def build_model(ref: types.SimpleNamespace, *, num_classes: int = 91, backbone: str = "resnet50",
                dilation: bool = False, position_embedding: str = "sine", hidden_dim: int = 256, nheads: int = 8,
                enc_layers: int = 6, dec_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                num_queries: int = 100, pre_norm: bool = False, aux_loss: bool = True,
                lr_backbone: float = 1e-5, masks: bool = False, freeze_detr: bool = False) -> torch.nn.Module:
    """The official model, built from its own classes with the given flags (`masks`: DETRsegm, as its build())."""
    args = types.SimpleNamespace(hidden_dim=hidden_dim, position_embedding=position_embedding,
                                 lr_backbone=lr_backbone, masks=masks, backbone=backbone, dilation=dilation,
                                 dropout=dropout, nheads=nheads, dim_feedforward=dim_feedforward,
                                 enc_layers=enc_layers, dec_layers=dec_layers, pre_norm=pre_norm)
    model = ref.detr.DETR(ref.backbone.build_backbone(args), ref.transformer.build_transformer(args),
                          num_classes=num_classes, num_queries=num_queries, aux_loss=aux_loss)
    return ref.segmentation.DETRsegm(model, freeze_detr=freeze_detr) if masks else model


def build_criterion(ref: types.SimpleNamespace, *, num_classes: int = 91, dec_layers: int = 6,
                    aux_loss: bool = True, set_cost_class: float = 1, set_cost_bbox: float = 5,
                    set_cost_giou: float = 2, bbox_loss_coef: float = 5, giou_loss_coef: float = 2,
                    eos_coef: float = 0.1, masks: bool = False, mask_loss_coef: float = 1,
                    dice_loss_coef: float = 1) -> torch.nn.Module:
    """The official SetCriterion with its HungarianMatcher and weight dict (`masks`: with loss_mask and loss_dice,
    whose auxiliary-layer weights its build() lists though it never computes them; left out here)."""
    matcher = ref.matcher.HungarianMatcher(set_cost_class, set_cost_bbox, set_cost_giou)
    weight_dict = {"loss_ce": 1, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    if aux_loss:
        for i in range(dec_layers - 1):
            weight_dict.update({f"loss_ce_{i}": 1, f"loss_bbox_{i}": bbox_loss_coef,
                                f"loss_giou_{i}": giou_loss_coef})
    losses = ["labels", "boxes", "cardinality"]
    if masks:
        weight_dict.update({"loss_mask": mask_loss_coef, "loss_dice": dice_loss_coef})
        losses.append("masks")
    return ref.detr.SetCriterion(num_classes, matcher=matcher, weight_dict=weight_dict, eos_coef=eos_coef,
                                 losses=losses)
