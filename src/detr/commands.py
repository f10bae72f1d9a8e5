"""The `detr predict`, `detr explain`, `detr export` and `detr plot` sub-commands.

Each command is `<name>_command(argv) -> int`, built from an `add_<name>_arguments(parser)`
and a `run_<name>(args)` pair. Bad input raises ValueError / OSError with a message for
people; `detr.cli` prints it on one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="detr_r50",
                        help="checkpoint file (ours or official) or a published name: detr_r50, detr_r50_dc5, "
                             "detr_r101, detr_r101_dc5 (downloaded once; default detr_r50)")
    parser.add_argument("--model", default=None,
                        help="for an official weights file: the published model it is (gives DC5 dilation)")
    parser.add_argument("--nheads", type=int, default=None,
                        help="for an official file trained with non-default attention heads (not in its shapes)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threshold", type=_threshold, default=0.7, help="minimum score, in [0, 1] (default 0.7)")
    parser.add_argument("--size", type=int, default=800, help="short side of the resized input (default 800)")
    parser.add_argument("--max-size", type=int, default=1333, help="cap on the long side (default 1333)")


def _detector(args: argparse.Namespace) -> Any:
    from .predict import Detector

    overrides = {"nheads": args.nheads} if args.nheads else {}
    return Detector.from_pretrained(args.weights, device=args.device, threshold=args.threshold, model=args.model,
                                    size=args.size, max_size=args.max_size, amp=getattr(args, "amp", "none"),
                                    **overrides)


def output_folder(path: str | os.PathLike) -> Path:
    """Create (if needed) and return a writable output folder, or raise a clear error."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output: {folder} exists and is not a folder")
    if not folder.parent.is_dir():
        raise ValueError(f"--output: the parent folder {folder.parent} of {folder} does not exist")
    folder.mkdir(exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--output: folder {folder} is not writable")
    return folder


def collect_images(inputs: list[str]) -> list[Path]:
    """Files named on the command line, and the image files (by suffix) of named folders, sorted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise ValueError(f"{item}: no such file or folder")
    if not found:
        raise ValueError(f"no image files found in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


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


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files and/or folders of images")
    _weights_arguments(parser)
    parser.add_argument("--output", default="predictions", help="folder for the results (default ./predictions)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                        help="run the model under autocast: bf16 (CPU or GPU; R50 ~1.8x faster than fp32 on a CPU "
                             "with AVX512-BF16, slightly different boxes), fp16 (GPU) (default none: fp32)")
    parser.add_argument("--attention", action="store_true",
                        help="also write attention pictures (decoder per object, encoder at --pixel)")
    parser.add_argument("--pixel", default=None, help="x,y pixel for the encoder attention (default: best box centre)")


def run_predict(args: argparse.Namespace) -> int:
    """Detect objects in every image; write annotated PNGs, detections.json and images.json.

    Returns 0 when every image was processed, 1 when some were skipped (reported on stderr).
    """
    from tqdm import tqdm

    from .explain import explain, parse_pixel, rgb_image, save_attention_pictures
    from .predict import to_image_tensor
    from .visualize import draw_detections

    pixel = parse_pixel(args.pixel) if args.pixel else None
    paths = collect_images(args.inputs)
    out = output_folder(args.output)
    detector = _detector(args)
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    skipped: list[str] = []
    used: set[str] = set()
    for path, image_id in zip(tqdm(paths, desc="predict", unit="img", disable=len(paths) < 2), _image_ids(paths)):
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
    _write_json(out / "detections.json", results)
    _write_json(out / "images.json", images)
    print(f"detr predict: {len(images)} image(s), {len(results)} detection(s) -> {out}"
          + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="one image file")
    _weights_arguments(parser)
    parser.add_argument("--output", default="attention", help="folder for the PNGs (default ./attention)")
    parser.add_argument("--pixel", default=None, help="x,y pixel for the encoder attention (default: best box centre)")


def run_explain(args: argparse.Namespace) -> int:
    """Write one decoder-attention PNG per detected object and one encoder-attention PNG."""
    from .explain import explain, parse_pixel, rgb_image, save_attention_pictures
    from .predict import to_image_tensor

    pixel = parse_pixel(args.pixel) if args.pixel else None
    image = to_image_tensor(Path(args.image))
    out = output_folder(args.output)
    maps = explain(_detector(args), image, pixel=pixel)
    paths = save_attention_pictures(rgb_image(image), maps, out)
    print(f"detr explain: {len(maps.detections)} object(s); {len(paths)} picture(s) in {out}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    _weights_arguments(parser)
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    parser.add_argument("--output", default="detr.onnx", help="file to write (default detr.onnx)")
    parser.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch on a random input")


def run_export(args: argparse.Namespace) -> int:
    """Export the model to ONNX (dynamic batch and image size), optionally checking parity."""
    import torch

    from .export import export_onnx, onnx_outputs

    if not Path(args.output).parent.is_dir():
        raise ValueError(f"--output: folder {Path(args.output).parent} does not exist")
    detector = _detector(args)
    path = export_onnx(detector.model.cpu(), args.output)
    print(f"detr export: wrote {path} (input 'images' [B, 3, H, W] normalised; outputs pred_logits, pred_boxes)")
    if args.verify:
        x = torch.randn(2, 3, 320, 416)
        logits, boxes = onnx_outputs(path, x)
        with torch.inference_mode():
            ref = detector.model.cpu()(x)
        diff = max(float((logits - ref["pred_logits"]).abs().max()), float((boxes - ref["pred_boxes"]).abs().max()))
        print(f"detr export: onnxruntime vs PyTorch max abs difference {diff:.2e}")
        if diff > 1e-4:
            raise ValueError(f"exported model differs from PyTorch by {diff:.2e} (> 1e-4)")
    return 0


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders holding log.txt (or log files)")
    parser.add_argument("--output", default="curves.png", help="PNG file to write (default curves.png)")


def run_plot(args: argparse.Namespace) -> int:
    """Draw loss, class error and AP over epochs of the given runs into one PNG."""
    from .visualize import plot_logs

    output = Path(args.output)
    if not output.parent.is_dir():
        raise ValueError(f"--output: folder {output.parent} does not exist")
    print(f"detr plot: wrote {plot_logs(args.runs, output)}")
    return 0


def _command(name: str, description: str, add: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> Callable[[list[str]], int]:
    def command(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=f"detr {name}", description=description)
        add(parser)
        return run(parser.parse_args(argv))

    return command


predict_command = _command("predict", "Detect objects in images: annotated PNGs and COCO-results JSON.",
                           add_predict_arguments, run_predict)
explain_command = _command("explain", "Attention maps of a detection (decoder per object, encoder at a pixel).",
                           add_explain_arguments, run_explain)
export_command = _command("export", "Export a model to ONNX with dynamic batch and image size.",
                          add_export_arguments, run_export)
plot_command = _command("plot", "Training curves (loss, class error, AP) of one or several runs.",
                        add_plot_arguments, run_plot)
