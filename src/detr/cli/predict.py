"""`detr predict`: detect objects in images; write annotated PNGs and COCO-results JSON (with --masks: instance
masks, panoptic PNGs and their COCO panoptic JSON too)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checkpoint import output_folder, write_bytes, write_json
from ..inference.detector import Detections, Detector, to_image_tensor
from ..inference.explain import explain, parse_pixel, rgb_image, save_attention_pictures
from ..inference.panoptic import Panoptic
from ..inference.visualize import draw_detections, draw_segmentation
from . import show_progress
from .common import add_detector_flags, collect_images, detector_from_args
from .flags import add_flags, parse_and_run
from .predict_video import add_video_arguments, run_video, wants_video


def _image_ids(paths: list[Path]) -> list[int]:
    """COCO image ids: the file names' numbers when all are distinct numbers (as in COCO), else 1..N."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def _unique_name(path: Path, used: set[str]) -> str:
    name, n = path.stem, 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}"
    used.add(name)
    return name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|VIDEO",
                        help="image files and/or folders of images; or one video file, webcam index or stream URL")
    add_detector_flags(parser)
    add_flags(parser, ["output_dir", "amp"], {"output_dir": "predictions", "amp": "none"},
              {"output_dir": "folder for the results (default ./predictions)",
               "amp": "run the model under autocast: bf16 (CPU or GPU; faster on CPUs with AVX512-BF16, slightly "
                      "different boxes), fp16 (GPU) (default none: fp32)"})
    parser.add_argument("--attention", action="store_true",
                        help="also write attention pictures (decoder per object, encoder at --pixel)")
    parser.add_argument("--pixel", default=None, help="x,y pixel for the encoder attention (default: best box centre)")
    parser.add_argument("--masks", action="store_true",
                        help="segmentation model (e.g. --weights detr_r50_panoptic): draw translucent masks; also "
                             "write masks.json (COCO RLE results), panoptic/NAME.png and panoptic.json (COCO panoptic)")
    add_video_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Detect objects in every image; write annotated PNGs, detections.json and images.json (and with --masks
    masks.json, panoptic/*.png and panoptic.json).

    Returns 0 when every image was processed, 1 when some were skipped (reported on stderr).
    """
    if wants_video(args):  # a video, webcam or stream: annotated.mp4 and frames.jsonl
        return run_video(args)
    pixel = parse_pixel(args.pixel) if args.pixel else None
    paths = collect_images(args.inputs)
    out = output_folder(args.output_dir, "--output_dir")
    detector = detector_from_args(args)
    if args.masks and not detector.has_masks:
        raise ValueError(f"--masks: --weights {args.weights} is a detection model without a mask head; give a "
                         "segmentation model, e.g. --weights detr_r50_panoptic or a checkpoint trained with --masks")
    if args.masks:
        output_folder(out / "panoptic")
    results: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    panoptic: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    skipped: list[str] = []
    used: set[str] = set()
    progress = None if show_progress() and len(paths) > 1 else True
    for path, image_id in zip(tqdm(paths, desc="predict", unit="img", disable=progress), _image_ids(paths)):
        try:
            image = to_image_tensor(path)
        except (ValueError, TypeError, OSError) as e:
            skipped.append(str(path))
            tqdm.write(f"detr predict: skipped {path}: {e}", file=sys.stderr)
            continue
        name = _unique_name(path, used)
        found, segments = _predict_image(detector, image, path, args, pixel, out / f"{name}_attention")
        results += found.to_coco(image_id)
        if segments is not None:
            masks += found.to_coco_masks(image_id)
            write_bytes(out / "panoptic" / f"{name}.png", segments.png())
            panoptic.append(segments.to_coco(image_id, f"{name}.png"))
        draw = draw_segmentation if args.masks else draw_detections
        draw(rgb_image(image), found).save(out / f"{name}.png")
        images.append({"id": image_id, "file_name": str(path), "height": found.image_size[0],
                       "width": found.image_size[1], "picture": f"{name}.png"})
    write_json(out / "detections.json", results)
    write_json(out / "images.json", images)
    if args.masks:
        write_json(out / "masks.json", masks)
        write_json(out / "panoptic.json", {"annotations": panoptic})
    print(f"detr predict: {len(images)} image(s), {len(results)} detection(s) -> {out}"
          + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


def _predict_image(detector: Detector, image: Any, path: Path, args: argparse.Namespace,
                   pixel: tuple[int, int] | None, attention: Path) -> tuple[Detections, Panoptic | None]:
    """One image's detections (with masks for a masks model), its panoptic segmentation with --masks, and
    with --attention its attention pictures written under `attention`."""
    if args.attention:  # one forward pass gives both the detections and their attention
        try:
            maps = explain(detector, image, pixel=pixel)
        except ValueError as e:  # --pixel outside this image: use the default pixel
            tqdm.write(f"detr predict: {path}: {e}; encoder map at the best box centre instead", file=sys.stderr)
            maps = explain(detector, image)
        save_attention_pictures(rgb_image(image), maps, attention)
        panoptic = detector.panoptic(image) if args.masks else None  # (a second forward pass)
        assert not isinstance(panoptic, list)
        return maps.detections, panoptic
    if args.masks:
        return detector.segment([image])[0]  # detections and panoptic from one forward pass
    found = detector(image)
    assert isinstance(found, Detections)
    return found, None


def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr predict", __doc__, add_arguments, run)
