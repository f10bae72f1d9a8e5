"""Predict on a large set of images: batches of similar shapes, decoded in DataLoader workers, results streamed
as JSON lines (see `batch_results`), resumable, and sharded over the processes torchrun starts.

The batches are planned over each process's whole shard before anything runs, and a resumed run re-runs a
batch with any unfinished image in it, so it forms the same batches and writes the same lines as a run that
was never stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import output_folder, write_bytes
from ..data.images import displayed_size, probe_image
from ..distributed import is_distributed, is_main_process, rank, world_size
from .batch_results import LineWriter, Summary, check_lines, clear, finished_lines, merge, part_path
from .defaults import DRAW_LIMIT
from .detector import Detections, Detector, to_image_tensor
from .explain import explain, rgb_image, save_attention_pictures
from .panoptic import Panoptic
from .visualize import draw_detections, draw_segmentation

log = logging.getLogger(__name__)

WINDOW_BATCHES = 32  # images are sorted by shape within windows of this many batches: little padding, rough order
SLEEP_ENV = "DETR_TEST_PREDICT_SLEEP"  # seconds to wait after each batch (tests kill a run mid-way)
DECODE_ERRORS = (ValueError, TypeError, OSError)


@dataclass(frozen=True)
class ImageItem:
    """One image of a job: its place in the outputs, file, COCO image id and unique name (NAME.png)."""

    index: int
    path: Path
    image_id: int
    name: str


@dataclass
class PredictOptions:
    """How `predict_images` runs.

    Attributes:
        batch_size: images per forward pass (padded together, as in validation).
        num_workers: DataLoader processes decoding images (0: in the main process).
        draw: write an annotated NAME.png per image; None: only for jobs of at most DRAW_LIMIT images.
        resume: keep the finished images of an earlier run into the same folder; else they are replaced.
        masks: a model with the mask head: masks.json, panoptic/NAME.png and panoptic.json too.
        attention: attention pictures per image in NAME_attention/ (one image per forward pass).
        pixel: the encoder attention's (x, y) pixel; None: the best box's centre.
        progress: show a progress bar.
        on_skip: called with (file, reason) for an image that cannot be read; default: a logged warning.
    """

    batch_size: int = 1
    num_workers: int = 0
    draw: bool | None = None
    resume: bool = False
    masks: bool = False
    attention: bool = False
    pixel: tuple[int, int] | None = None
    progress: bool = False
    on_skip: Callable[[str, str], None] | None = None


def image_ids(paths: Sequence[Path]) -> list[int]:
    """COCO image ids: the file names' numbers when all are distinct numbers (as in COCO), else 1..N."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def plan_items(paths: Sequence[Path]) -> list[ImageItem]:
    """The job's images with ids and names unique in the job (a second rgb.png is rgb_2)."""
    used: set[str] = set()
    items = []
    for index, (path, image_id) in enumerate(zip(paths, image_ids(paths))):
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}"
        used.add(name)
        items.append(ImageItem(index, Path(path), image_id, name))
    return items


def aspect(path: Path) -> float:
    """Height / width as displayed (EXIF applied), from the header only; 1 for a file that cannot be read (its
    decode fails later and reports why)."""
    try:
        width, height = displayed_size(probe_image(path, decode=False), apply_exif=True)
    except DECODE_ERRORS:
        return 1.0
    return height / width


def plan_batches(items: Sequence[ImageItem], batch_size: int, window: int = WINDOW_BATCHES) -> list[list[ImageItem]]:
    """Batches of images of similar aspect ratio (resized to the same short side, they pad little), sorted within
    windows of `window` batches so the outputs still come roughly in order."""
    if batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {batch_size}")
    if batch_size == 1:
        return [[item] for item in items]
    span = batch_size * window
    batches = []
    for start in range(0, len(items), span):
        chunk = sorted(items[start:start + span], key=lambda item: (aspect(item.path), item.index))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return batches


class ImageFiles(Dataset):
    """Decodes the images of a job; an unreadable file gives the reason as text instead of a tensor."""

    def __init__(self, items: Sequence[ImageItem]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[ImageItem, Tensor | str]:
        item = self.items[k]
        try:
            return item, to_image_tensor(item.path)  # [3, H, W] uint8
        except DECODE_ERRORS as e:
            return item, str(e)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def predict_images(detector: Detector, paths: Sequence[Path], output: Path,
                   options: PredictOptions | None = None) -> Summary | None:
    """Detect objects in every image; stream one JSON line per image to `output`, then write the final files.

    Under torchrun every process takes every world_size-th image, and process 0 merges after all finished.

    Returns:
        What was written (on process 0; None on the others).

    Raises:
        batch_results.ResultsError: with `resume`, the folder holds results of other images.
    """
    opts = options or PredictOptions()
    items = plan_items(paths)
    draw = len(items) <= DRAW_LIMIT if opts.draw is None else opts.draw
    if opts.draw is None and not draw and is_main_process():
        log.info("%d images: no annotated pictures (drawn by default up to %d images; --draw to write them)",
                 len(items), DRAW_LIMIT)
    if is_main_process():
        if opts.masks:
            output_folder(output / "panoptic")
        if not opts.resume:
            clear(output)
    _barrier()  # the folder is ready before any process writes to it
    mine = items[rank()::world_size()]
    batch_size = 1 if opts.attention else opts.batch_size
    if opts.attention and opts.batch_size > 1:
        log.info("attention pictures: one image per forward pass (batch size %d not used)", opts.batch_size)
    batches = plan_batches(mine, batch_size)
    done: set[int] = set()
    if opts.resume:
        earlier = finished_lines(output)
        check_lines(output, earlier, [str(item.path) for item in items])
        done = set(earlier)
    todo = [batch for batch in batches if any(item.index not in done for item in batch)]
    if is_distributed():
        log.info("process %d of %d: %d of %d images", rank(), world_size(), len(mine), len(items))
    if opts.resume:
        log.info("resuming: %d of %d images finished earlier", sum(i.index in done for i in mine), len(mine))
    _run(detector, todo, done, output, opts, draw, len(mine))
    _barrier()  # every part written before the merge
    if not is_main_process():
        return None
    summary = merge(output, [str(item.path) for item in items], opts.masks)
    summary.drawn = draw
    return summary


def _run(detector: Detector, batches: list[list[ImageItem]], done: set[int], output: Path, opts: PredictOptions,
         draw: bool, total: int) -> None:
    """Run the batches through the model, appending their lines (those not already done) after each."""
    flat = [item for batch in batches for item in batch]
    sampler, start = [], 0
    for batch in batches:
        sampler.append(list(range(start, start + len(batch))))
        start += len(batch)
    loader = DataLoader(ImageFiles(flat), batch_sampler=sampler, num_workers=opts.num_workers, collate_fn=_as_list)
    pause = float(os.environ.get(SLEEP_ENV, "0") or 0)
    writer = LineWriter(part_path(output, rank(), world_size()))
    bar = tqdm(total=total, initial=total - len({i.index for i in flat} - done), desc="predict", unit="img",
               disable=not opts.progress or None)
    try:
        for loaded in loader:
            entries = [e for e in _run_batch(detector, loaded, output, opts, draw) if e["index"] not in done]
            writer.write(entries)
            bar.update(len(entries))
            if pause:
                time.sleep(pause)
    finally:
        writer.close()
        bar.close()


def _run_batch(detector: Detector, loaded: list[tuple[ImageItem, Tensor | str]], output: Path, opts: PredictOptions,
               draw: bool) -> list[dict[str, Any]]:
    """The lines of one batch: the images' detections (pictures and panoptic PNGs written first), or errors."""
    entries = []
    good = [(item, image) for item, image in loaded if isinstance(image, Tensor)]
    for item, reason in ((i, r) for i, r in loaded if isinstance(r, str)):
        (opts.on_skip or _log_skip)(str(item.path), reason)
        entries.append({"index": item.index, "file_name": str(item.path), "error": reason})
    images = [image for _, image in good]
    if not images:
        return entries
    if opts.attention:
        results = [_explained(detector, item, image, output, opts) for item, image in good]
    elif opts.masks:
        results = list(detector.segment(images))
    else:
        results = [(found, None) for found in detector.detect(images, detector.threshold)]
    for (item, image), (found, segments) in zip(good, results):
        entries.append(_entry(item, image, found, segments, output, draw))
    return sorted(entries, key=lambda e: e["index"])


def _entry(item: ImageItem, image: Tensor, found: Detections, segments: Panoptic | None, output: Path,
           draw: bool) -> dict[str, Any]:
    """One image's line; its picture and panoptic PNG are written before, so a line means its files exist."""
    height, width = found.image_size
    entry: dict[str, Any] = {"index": item.index, "file_name": str(item.path), "image_id": item.image_id,
                             "width": width, "height": height}
    if draw:
        drawn = (draw_segmentation if found.masks is not None else draw_detections)(rgb_image(image), found)
        drawn.save(output / f"{item.name}.png")
        entry["picture"] = f"{item.name}.png"
    entry["detections"] = found.to_coco(item.image_id)
    entry["queries"] = [int(q) for q in found.queries]  # the decoder query of each detection
    if segments is not None:
        entry["masks"] = found.to_coco_masks(item.image_id)
        write_bytes(output / "panoptic" / f"{item.name}.png", segments.png())
        entry["panoptic"] = segments.to_coco(item.image_id, f"{item.name}.png")
    return entry


def _explained(detector: Detector, item: ImageItem, image: Tensor, output: Path,
               opts: PredictOptions) -> tuple[Detections, Panoptic | None]:
    """Detections and attention pictures from one forward pass (and with masks the panoptic from a second)."""
    try:
        maps = explain(detector, image, pixel=opts.pixel)
    except ValueError as e:  # --pixel outside this image: the default pixel
        log.warning("%s: %s; encoder map at the best box centre instead", item.path, e)
        maps = explain(detector, image)
    save_attention_pictures(rgb_image(image), maps, output / f"{item.name}_attention")
    segments = detector.panoptic(image) if opts.masks else None  # (a second forward pass)
    assert not isinstance(segments, list)
    return maps.detections, segments


def _log_skip(path: str, reason: str) -> None:
    log.warning("skipped %s: %s", path, reason)


def _barrier() -> None:
    if is_distributed():
        dist.barrier()


__all__ = ["DRAW_LIMIT", "ImageItem", "PredictOptions", "Summary", "image_ids", "plan_batches", "plan_items",
           "predict_images"]
