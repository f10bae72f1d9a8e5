"""`detr predict`: detect objects in images; write annotated PNGs and COCO-results JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checkpoint import output_folder, write_json
from ..inference.detector import to_image_tensor
from ..inference.explain import explain, parse_pixel, rgb_image, save_attention_pictures
from ..inference.visualize import draw_detections
from ..runtime import AMP_MODES
from . import parse_and_run, show_progress
from .common import add_weights_arguments, collect_images, detector_from_args


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
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files and/or folders of images")
    add_weights_arguments(parser)
    parser.add_argument("--output", default="predictions", help="folder for the results (default ./predictions)")
    parser.add_argument("--amp", default="none", choices=AMP_MODES,
                        help="run the model under autocast: bf16 (CPU or GPU; R50 ~1.8x faster than fp32 on a CPU "
                             "with AVX512-BF16, slightly different boxes), fp16 (GPU) (default none: fp32)")
    parser.add_argument("--attention", action="store_true",
                        help="also write attention pictures (decoder per object, encoder at --pixel)")
    parser.add_argument("--pixel", default=None, help="x,y pixel for the encoder attention (default: best box centre)")


def run(args: argparse.Namespace) -> int:
    """Detect objects in every image; write annotated PNGs, detections.json and images.json.

    Returns 0 when every image was processed, 1 when some were skipped (reported on stderr).
    """
    pixel = parse_pixel(args.pixel) if args.pixel else None
    paths = collect_images(args.inputs)
    out = output_folder(args.output)
    detector = detector_from_args(args)
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    skipped: list[str] = []
    used: set[str] = set()
    for path, image_id in zip(tqdm(paths, desc="predict", unit="img", disable=None if show_progress() and len(paths) > 1 else True), _image_ids(paths)):
        try:
            image = to_image_tensor(path)
        except (ValueError, TypeError, OSError) as e:
            skipped.append(str(path))
            tqdm.write(f"detr predict: skipped {path}: {e}", file=sys.stderr)
            continue
        name = _unique_name(path, used)
        picture = rgb_image(image)
        if args.attention:  # one forward pass gives both the detections and their attention
            try:
                maps = explain(detector, image, pixel=pixel)
            except ValueError as e:  # --pixel outside this image: use the default pixel
                tqdm.write(f"detr predict: {path}: {e}; encoder map at the best box centre instead", file=sys.stderr)
                maps = explain(detector, image)
            save_attention_pictures(picture, maps, out / f"{name}_attention")
            found = maps.detections
        else:
            found = detector(image)
        draw_detections(picture, found).save(out / f"{name}.png")
        results += found.to_coco(image_id)
        images.append({"id": image_id, "file_name": str(path), "height": found.image_size[0],
                       "width": found.image_size[1], "picture": f"{name}.png"})
    write_json(out / "detections.json", results)
    write_json(out / "images.json", images)
    print(f"detr predict: {len(images)} image(s), {len(results)} detection(s) -> {out}"
          + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0




def main(argv: list[str]) -> int:
    return parse_and_run(argv, "detr predict", __doc__, add_arguments, run)
