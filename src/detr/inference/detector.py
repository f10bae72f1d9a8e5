"""Run a trained DETR on images: `Detector` and its per-image `Detections`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.coco import coco_results
from ..data.images import load_image, to_rgb
from ..data.masks import coco_mask_results
from ..data.transforms import preprocess, val_short_side
from ..models.build import Model
from ..models.detr import pad_images
from ..postprocessing.boxes import postprocess
from ..postprocessing.masks import postprocess_panoptic, postprocess_segmentation
from ..registry import COCO_CLASSES, COCO_PANOPTIC_CLASSES, coco_panoptic_is_thing
from ..runtime import autocast, check_amp, check_threshold, resolve_device
from ..weights.loading import load_pretrained
from .panoptic import Panoptic, from_official
from .runtimes import ExportedRuntime, TorchRuntime, backend_for, load_runtime

if TYPE_CHECKING:
    from .video import Tracker, VideoSource

ImageInput = str | os.PathLike | Image.Image | np.ndarray | Tensor
Sizes = list[tuple[int, int]]  # (height, width) per image


@dataclass
class Detections:
    """The objects found in one image, best first.

    Attributes:
        boxes: [N, 4] float (x0, y0, x1, y1) in pixels of the original image.
        scores: [N] class probability of each box.
        labels: [N] class ids: the dataset's category ids (COCO's for the official weights; for a model trained
            with --data, its folder's own ids).
        names: the class name of each box.
        image_size: (height, width) of the original image.
        queries: [N] the decoder query that found each box (for attention maps).
        masks: [N, H, W] bool at the original image size, for a model with the mask head; else None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]
    image_size: tuple[int, int]
    queries: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries: {"image_id", "category_id", "bbox": [x, y, w, h], "score"}."""
        return coco_results(image_id, self.boxes, self.scores, self.labels)

    def to_coco_masks(self, image_id: int) -> list[dict[str, Any]]:
        """COCO segmentation results entries: {"image_id", "category_id", "segmentation" (compressed RLE), "score"}."""
        if self.masks is None:
            raise ValueError("to_coco_masks: these detections have no masks (the model has no mask head)")
        return coco_mask_results(image_id, self.masks, self.scores, self.labels)

    def to_supervision(self) -> Any:
        """These detections as a `supervision.Detections` (needs the `supervision` extra).

        xyxy float32 [N, 4] pixels, confidence float32 [N], class_id int64 [N], mask bool [N, H, W] (masks
        models only) and the names in data["class_name"] (a numpy str array), as supervision's own converters
        fill them.
        """
        try:
            import supervision as sv
        except ImportError:
            raise ImportError("to_supervision needs supervision: pip install 'detr-aligned[supervision]'") from None
        return sv.Detections(
            xyxy=self.boxes.detach().cpu().float().numpy().reshape(-1, 4),  # reshape: [0, 4] when empty
            confidence=self.scores.detach().cpu().float().numpy(),
            class_id=self.labels.detach().cpu().numpy().astype(np.int64),
            mask=None if self.masks is None else self.masks.detach().cpu().numpy().astype(bool),
            data={"class_name": np.array(self.names, dtype=str)},
        )


@dataclass
class VideoFrame:
    """One frame of a video run through `Detector.video`.

    Attributes:
        index: the frame's number in the source, from 0 (with a stride, every stride-th).
        time: seconds from the source's first frame.
        image: [H, W, 3] uint8 RGB pixels.
        detections: the objects found in it.
        track_ids: [N] int ByteTrack ids of the detections (-1: a track's first, unconfirmed sighting);
            None without tracking.
    """

    index: int
    time: float
    image: np.ndarray
    detections: Detections
    track_ids: np.ndarray | None = None


class Detector:
    """A DETR model with its preprocessing, postprocessing and class names.

    Args:
        model: a DETR or ConditionalDETR (put in eval mode and moved to `device`), or an exported file's
            runtime (`detr.inference.runtimes.load_runtime`; it computes on the CPU).
        class_names: name of each class id; None: COCO names for 91 classes, else the ids.
        category_ids: the dataset's category id of each label (a --data model's mapping, from its checkpoint;
            `class_names` then follow the labels); None: labels are the category ids.
        device: "cpu", "cuda", "cuda:1", ...
        threshold: keep detections whose score is at least this, in [0, 1].
        size: short side of the resized image (validation: 800).
        max_size: cap on the long side (validation: 1333).
        amp: "none" (fp32), or run the model under autocast: "bf16" (CPU or GPU; R50 ~1.8x faster
            than fp32 on a CPU with AVX512-BF16, boxes move by ~0.004 normalised L1 on random weights:
            see BENCHMARKS.md), "fp16" (GPU only).

    Example:
        >>> detector = Detector.from_pretrained("detr_r50")          # downloads once
        >>> found = detector("street.jpg")                             # or PIL / numpy / tensor
        >>> [(n, round(s, 2)) for n, s in zip(found.names, found.scores.tolist())]
        [('car', 0.99), ('person', 0.98)]
        >>> many = detector(["a.jpg", "b.png"])                        # a list in, a list out
        >>> segm = Detector.from_pretrained("detr_r50_panoptic")       # a model with the mask head:
        >>> segm("street.jpg").masks.shape                             # [N, H, W] bool instance masks
        >>> segm.panoptic("street.jpg").segments_info                  # COCO panoptic segments, named
    """

    def __init__(self, model: Model | ExportedRuntime, class_names: Sequence[str] | None = None,
                 device: str | torch.device = "cpu", threshold: float = 0.7, size: int = 800, max_size: int = 1333,
                 amp: str = "none", category_ids: Sequence[int] | None = None):
        self.device = resolve_device(device)
        self.amp = check_amp(amp, self.device)
        self.model: Model | None  # None for an exported file: explain and export need the PyTorch model
        if isinstance(model, ExportedRuntime):
            if self.amp != "none":  # its runtime computes on the CPU; `device` holds the tensors around it
                raise ValueError(f"{model.path}: an exported file runs at the precision its runtime was given "
                                 f"(OpenVINO: precision='bf16'), not under amp; got amp={amp!r}")
            model.check_detector()
            self.model, self.runtime = None, model
        else:
            self.model = model.eval().to(self.device)
            self.runtime = TorchRuntime(self.model)
        if class_names is None:
            exported = isinstance(model, ExportedRuntime)
            class_names = default_class_names(int(model.metadata["num_classes"]) if exported else model.num_classes)
        self.threshold = check_threshold(threshold)
        self.size, self.max_size = size, max_size
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "detr_r50", device: str | torch.device = "cpu",
                        threshold: float = 0.7, model: str | None = None, progress: bool = True,
                        size: int | None = None, max_size: int | None = None, amp: str = "none",
                        backend: str | None = None, **overrides: Any) -> Detector:
        """Load a published model by name, one of our checkpoints, an official weights file, a transformers
        DETR / Conditional DETR folder or hub id, or a file written by `detr export`.

        Args:
            name_or_path: "detr_r50", "detr_r50_dc5", "detr_r101", "detr_r101_dc5", a file path, a transformers
                folder (config.json + model.safetensors or pytorch_model.bin), or a HuggingFace hub id such as
                "facebook/detr-resnet-50" (fetched with huggingface_hub).
            device: where to run the model.
            threshold: minimum score of a returned detection, in [0, 1].
            model: for an official file, the architecture it was trained as (gives
                dilation, which its shapes cannot tell), e.g. "detr_r50_dc5".
            progress: show a progress bar when downloading.
            size, max_size: resize of the input images; default: the checkpoint's validation
                size (800, 1333 for the published models; a transformers folder's preprocessor_config.json).
            amp: "none", "bf16" or "fp16" (GPU): see the class docstring.
            backend: run an exported plain graph (`detr export` without --postprocess) in "onnxruntime" or
                "openvino", on the CPU; None: by suffix (.onnx: onnxruntime, .xml: OpenVINO), else PyTorch.
                Class names and resize come from the file's metadata.
            **overrides: model options an official file's shapes cannot tell, e.g. dilation, nheads; for an
                exported file, the runtime's options (OpenVINO: precision="f32" or "bf16"; num_threads).

        Returns:
            A ready Detector.

        Raises:
            detr.weights.hub.WeightsError: unknown name, missing file, or failed download.
            detr.checkpoint.CheckpointError: the file is not a usable DETR checkpoint.

        Example:
            >>> detector = Detector.from_pretrained("runs/voc/checkpoint.pth", device="cuda")
            >>> on_cpu = Detector.from_pretrained("detr.xml")       # `detr export --format openvino`
        """
        check_threshold(threshold)
        check_amp(amp, resolve_device(device))
        if backend_for(name_or_path, backend) is not None:
            runtime = load_runtime(name_or_path, backend, **overrides)
            runtime.check_detector()
            meta = runtime.metadata
            return cls(runtime, meta["class_names"], device=device, threshold=threshold,
                       size=size or meta["size"], max_size=max_size or meta["max_size"], amp=amp,
                       category_ids=meta.get("category_ids"))
        net, cfg = load_pretrained(name_or_path, model=model, progress=progress, **overrides)
        d = cfg.data
        size = size or val_short_side(d)
        return cls(net, d.class_names, device=device, threshold=threshold, size=size,
                   max_size=max_size or d.max_size, amp=amp, category_ids=d.category_ids)

    def __call__(self, images: ImageInput | Sequence[ImageInput], threshold: float | None = None,
                 batch_size: int = 1) -> Detections | list[Detections]:
        """Detect objects in one image or a list of images.

        Args:
            images: a file path, PIL image, HWC uint8 numpy array, [3, H, W] tensor (uint8,
                or float in [0, 1]), a [B, 3, H, W] tensor, or a list of these.
            threshold: overrides the detector's threshold for this call.
            batch_size: images per forward pass (padded together as in validation).

        Returns:
            One `Detections` for a single image; a list for a list or a 4-D tensor.
        """
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, Tensor) and images.dim() == 4)
        items = [images] if single else list(images)
        thr = self.threshold if threshold is None else check_threshold(threshold)
        results: list[Detections] = []
        for start in range(0, len(items), batch_size):
            chunk = [to_image_tensor(x) for x in items[start:start + batch_size]]
            results += self.detect(chunk, thr)
        return results[0] if single else results

    def video(self, source: str | int | os.PathLike | VideoSource, stride: int = 1, track: bool = False,
              threshold: float | None = None) -> Iterator[VideoFrame]:
        """Detect (and with `track` follow) objects in a video file, a webcam or a stream, frame by frame.

        Args:
            source: a video file, a webcam index (0), a stream URL (rtsp://, http://, ...) or an open
                `VideoSource` (left open); needs the `video` extra (PyAV).
            stride: detect every `stride`-th frame; the others are decoded and skipped.
            track: add ByteTrack ids (the `track` extra), the tracker running at the detected frames' rate.
            threshold: overrides the detector's threshold (and the tracker's) for this video.

        Returns:
            An iterator of `VideoFrame`s in order; a damaged file or a dropped stream ends it with a warning.

        Example:
            >>> for frame in detector.video("street.mp4", stride=2, track=True):
            ...     print(frame.index, frame.time, frame.detections.names, frame.track_ids)
        """
        from .video import Tracker, VideoSource, check_stride

        check_stride(stride)
        thr = self.threshold if threshold is None else check_threshold(threshold)
        src = source if isinstance(source, VideoSource) else VideoSource(source)  # errors now, not at next()
        try:
            tracker = Tracker(src.rate / stride, thr) if track else None
        except BaseException:
            if src is not source:
                src.close()
            raise
        return self._video_frames(src, src is not source, stride, thr, tracker)

    def _video_frames(self, src: VideoSource, owned: bool, stride: int, threshold: float,
                      tracker: Tracker | None) -> Iterator[VideoFrame]:
        try:
            for index, time, image in src.frames(stride):
                found = self.detect([torch.from_numpy(image).permute(2, 0, 1)], threshold)[0]  # [3, H, W] uint8
                ids = None if tracker is None else tracker.update(found.boxes.numpy(), found.scores.numpy(),
                                                                   found.labels.numpy())
                yield VideoFrame(index, time, image, found, ids)
        finally:
            if owned:
                src.close()

    @property
    def has_masks(self) -> bool:
        """Whether the model has the mask head: `Detections.masks` and `panoptic` need it."""
        return self.runtime.has_masks

    def panoptic(self, images: ImageInput | Sequence[ImageInput], threshold: float | None = None,
                 is_thing: Callable[[int], bool] = coco_panoptic_is_thing) -> Panoptic | list[Panoptic]:
        """The panoptic segmentation of one image or a list of images (a model with the mask head only).

        Args:
            images: as `__call__` (run one at a time).
            threshold: least class score of a kept segment; None: the class head's (`PANOPTIC_THRESHOLDS`: the
                official 0.85 for the softmax head).
            is_thing: whether a class id is a thing (default: COCO panoptic's, ids 1-90); stuff of one class
                is merged into one segment.

        Returns:
            One `Panoptic` (ids from 1, 0 = VOID) for a single image; a list for a list.
        """
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, Tensor) and images.dim() == 4)
        found = [self.segment([to_image_tensor(x)], panoptic_threshold=threshold, is_thing=is_thing)[0][1]
                 for x in ([images] if single else list(images))]
        return found[0] if single else found

    def segment(self, images: Sequence[Tensor], threshold: float | None = None,
                panoptic_threshold: float | None = None,
                is_thing: Callable[[int], bool] = coco_panoptic_is_thing) -> list[tuple[Detections, Panoptic]]:
        """Detections with masks and the panoptic segmentation of images converted by `to_image_tensor`, from
        one forward pass; arguments as `__call__` and `panoptic`."""
        if not self.has_masks:
            raise ValueError(f"panoptic segmentation needs a model with the mask head; this "
                             f"{type(self.model or self.runtime).__name__} has none (load a segmentation model, "
                             f"e.g. detr_r50_panoptic)")
        thr = self.threshold if threshold is None else check_threshold(threshold)
        outputs, sizes, processed = self._forward(images)
        with torch.inference_mode():
            pans = postprocess_panoptic(outputs, processed, sizes, is_thing=is_thing, threshold=panoptic_threshold,
                                        class_loss=self.runtime.class_loss, crop_padding=True)
        return list(zip(self._detections(outputs, sizes, processed, thr),
                        [from_official(p, self.label_name) for p in pans]))

    def preprocess(self, image: Tensor) -> Tensor:
        """[3, H, W] uint8 or float 0-1 image -> normalised resized [3, H', W'] on the device."""
        return preprocess(image, size=self.size, max_size=self.max_size).to(self.device)

    def detect(self, images: Sequence[Tensor], threshold: float) -> list[Detections]:
        """Detections for images already converted by `to_image_tensor` (with masks for a masks model)."""
        return self._detections(*self._forward(images), threshold)

    def _forward(self, images: Sequence[Tensor]) -> tuple[dict[str, Tensor], Sizes, Sizes]:
        """The model's float outputs, the original and the processed (resized, unpadded) (height, width)s."""
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        inputs = [self.preprocess(img) for img in images]
        with torch.inference_mode():
            batch, mask = pad_images(inputs)  # [B, 3, H, W], [B, H, W] True on padding
            with autocast(self.device, self.amp):
                outputs = self.runtime(batch, mask)
            outputs = {k: v.float() for k, v in outputs.items() if k in ("pred_logits", "pred_boxes", "pred_masks")}
        return outputs, sizes, [(int(x.shape[1]), int(x.shape[2])) for x in inputs]

    def _detections(self, outputs: dict[str, Tensor], sizes: Sizes, processed: Sizes,
                    threshold: float) -> list[Detections]:
        targets = torch.tensor(sizes, device=self.device)
        with torch.inference_mode():
            if "pred_masks" in outputs:  # masks made for the detections kept only (memory)
                results = postprocess_segmentation(outputs, targets, processed, self.runtime.class_loss,
                                                   min_score=threshold)
            else:
                results = postprocess(outputs, targets, self.runtime.class_loss)
        return [self._select(r, size, threshold) for r, size in zip(results, sizes)]

    def _select(self, result: dict[str, Tensor], size: tuple[int, int], threshold: float) -> Detections:
        keep = torch.nonzero(result["scores"] >= threshold).flatten()
        keep = keep[result["scores"][keep].argsort(descending=True, stable=True)]
        scores, labels, boxes, queries = (result[k][keep].cpu() for k in ("scores", "labels", "boxes", "queries"))
        names = [self.label_name(int(i)) for i in labels]
        if self.category_ids is not None:  # --data: labels 0..K-1 -> the dataset's ids
            ids = self.category_ids
            labels = torch.tensor([ids[i] if 0 <= i < len(ids) else i for i in labels.tolist()], dtype=labels.dtype)
        masks = result["masks"][keep].cpu() if "masks" in result else None  # [N, H, W] bool
        return Detections(boxes, scores, labels, names, size, queries, masks)

    def label_name(self, label: int) -> str:
        """The class name of a label id (the id itself when the names do not cover it)."""
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


def default_class_names(num_classes: int) -> list[str]:
    """COCO's names for 91 classes (official weights), COCO panoptic's for 250, else the ids as text."""
    if num_classes == 91:
        return list(COCO_CLASSES)
    if num_classes == 250:
        return list(COCO_PANOPTIC_CLASSES)
    return [str(i) for i in range(num_classes)]


def to_image_tensor(image: ImageInput) -> Tensor:
    """Any supported image -> [3, H, W] tensor (uint8, or float in [0, 1]) on the CPU.

    Paths are read with EXIF orientation applied; PIL images of any mode (grey, RGBA,
    palette, 16-bit) are converted to RGB; grey arrays and tensors are repeated to 3 channels.
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(Path(image))
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(to_rgb(image), dtype=np.uint8)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"image: expected an HxW or HxWxC array, got shape {image.shape}")
        arr = image[..., None] if image.ndim == 2 else image
        return _check_tensor(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1), "HWC array")
    if isinstance(image, Tensor):
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3:
            raise ValueError(f"image: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        return _check_tensor(image.detach().cpu(), "[C, H, W] tensor")
    raise TypeError(f"image: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")


def _check_tensor(img: Tensor, kind: str) -> Tensor:
    """[C, H, W] with C in 1, 3, 4 (grey, RGB, RGBA) -> [3, H, W] uint8 or float in [0, 1]."""
    channels = img.shape[0]
    if channels not in (1, 3, 4) or img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"image: a {kind} needs 1, 3 or 4 channels and some pixels, got shape "
                         f"{tuple(img.shape)} as [C, H, W]")
    img = img[:3] if channels == 4 else img.expand(3, -1, -1).contiguous() if channels == 1 else img
    if img.dtype == torch.uint8:
        return img
    if not img.is_floating_point():
        raise TypeError(f"image: expected uint8 or float pixels, got {img.dtype}")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image: float pixels must be in [0, 1] (unnormalised), got values in [{lo:.3g}, {hi:.3g}]")
    return img.float()
