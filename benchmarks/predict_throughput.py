"""Folder prediction throughput (images/s) side by side in one run: the old `detr predict` loop, the batched
engine (`detr.inference.batch.predict_images`) at batch sizes 1, 4, 8 with 0 and 2 decoding workers, the model's
own time through `Detector` in batches of 8 (decoded images, no files), and transformers'
`pipeline("object-detection")` on the same weights (converted as `detr convert --to hf` does).

    python benchmarks/predict_throughput.py --weights detr_r50 --images 300 --output predict_throughput.md
    python benchmarks/predict_throughput.py --tiny --images 10        # a dry run of the script (random small model)

The images are generated (random content, mixed sizes and aspect ratios, JPEG) unless --folder is given. Every
method runs once on a few images first (warm-up), then once on the whole folder; the table gives seconds,
images/s and the ratio to the old loop. Start-up (importing torch, loading the weights) is not counted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detr.checkpoint import write_json
from detr.cli.common import collect_images
from detr.inference.batch import PredictOptions, predict_images
from detr.inference.detector import Detector, to_image_tensor
from detr.inference.explain import rgb_image
from detr.inference.visualize import draw_detections

# (height, width) of the generated images before the scale: COCO-like landscape, portrait and square shapes
SHAPES = [(480, 640), (640, 480), (427, 640), (640, 427), (500, 500), (375, 500), (500, 333), (612, 612)]
TINY = {"backbone": "resnet18", "hidden_dim": 64, "nheads": 2, "enc_layers": 1, "dec_layers": 2,
        "dim_feedforward": 128, "num_queries": 10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--weights", default="detr_r50", help="what Detector.from_pretrained loads (default detr_r50)")
    parser.add_argument("--tiny", action="store_true", help="a random small model instead of --weights (dry run)")
    parser.add_argument("--folder", default=None, help="images to use (default: --images generated ones)")
    parser.add_argument("--images", type=int, default=300, help="how many images to generate (default 300)")
    parser.add_argument("--scale", type=float, default=1.0, help="generated image sizes times this (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threshold", type=float, default=0.7, help="score threshold (default 0.7)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--no_hf", action="store_true", help="leave out the transformers pipeline")
    parser.add_argument("--output", default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def make_images(folder: Path, count: int, scale: float) -> list[Path]:
    """`count` JPEGs of random content in SHAPES (scaled), cycling, so batches must be grouped by shape."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        h, w = (max(8, round(s * scale)) for s in SHAPES[n % len(SHAPES)])
        paths.append(folder / f"{n:06d}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return paths


def load_detector(args: argparse.Namespace, work: Path) -> tuple[Detector, str]:
    """The Detector, and a checkpoint file or name of the same weights for the conversion to transformers."""
    if not args.tiny:
        return Detector.from_pretrained(args.weights, device=args.device, threshold=args.threshold), args.weights
    import detr
    from detr.checkpoint import save_checkpoint
    from detr.config import Config, DataConfig, ModelConfig

    torch.manual_seed(0)
    model = detr.create_model("detr_r50", num_classes=91, **TINY).eval()
    path = work / "tiny.pth"
    cfg = Config(model=ModelConfig(**TINY), data=DataConfig())
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict()})
    return Detector.from_pretrained(path, device=args.device, threshold=args.threshold, size=96, max_size=160), str(path)


def old_loop(detector: Detector, paths: list[Path], out: Path) -> None:
    """What `detr predict` did before the batched engine: decode, detect, draw and save, one image at a time."""
    results = []
    for image_id, path in enumerate(paths, 1):
        image = to_image_tensor(path)
        found = detector(image)
        results += found.to_coco(image_id)
        draw_detections(rgb_image(image), found).save(out / f"{path.stem}.png")
    write_json(out / "detections.json", results)


def model_only(detector: Detector, images: list[torch.Tensor], batch_size: int) -> None:
    """The model's own time through Detector: decoded images in batches, no files."""
    for start in range(0, len(images), batch_size):
        detector.detect(images[start:start + batch_size], detector.threshold)


def hf_pipeline(weights: str, detector: Detector, work: Path, device: str) -> Callable[[list[Path], int], None]:
    """transformers' object-detection pipeline on the same weights and input sizes (converted as `detr convert
    --to hf`)."""
    from transformers import pipeline

    from detr.inference.detector import default_class_names
    from detr.weights.loading import load_pretrained
    from detr.weights.to_hf import save_hf_folder

    net, cfg = load_pretrained(weights)
    names = cfg.data.class_names or default_class_names(cfg.model.num_classes)
    folder = save_hf_folder(work / "hf", net.state_dict(), cfg.model, names, detector.size, detector.max_size)
    pipe = pipeline("object-detection", model=str(folder), device=device)

    def run(paths: list[Path], batch_size: int) -> None:
        pipe([str(p) for p in paths], batch_size=batch_size, threshold=detector.threshold)
    return run


def timed(fn: Callable[[], None]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(args: argparse.Namespace, detector: Detector, weights: str, paths: list[Path],
            work: Path) -> list[tuple[str, float | str]]:
    """(method, seconds) for each method, each after a warm-up on a few images; (method, why) for one that fails
    (transformers' pipeline cannot batch images of different sizes)."""
    warm = paths[:min(4, len(paths))]
    rows: list[tuple[str, float | str]] = []

    def case(name: str, run: Callable[[list[Path], Path], None]) -> None:
        out = Path(tempfile.mkdtemp(dir=work))
        try:
            run(warm, out)
        except RuntimeError as e:
            rows.append((name, f"fails: {str(e).splitlines()[0][:80]}"))
            print(f"{name}: {rows[-1][1]}", file=sys.stderr)
            return
        out = Path(tempfile.mkdtemp(dir=work))
        rows.append((name, timed(lambda: run(paths, out))))
        print(f"{name}: {rows[-1][1]:.2f} s", file=sys.stderr)

    case("old loop (batch 1, workers 0, draws)", lambda p, o: old_loop(detector, p, o))
    drawing = PredictOptions(batch_size=1, num_workers=0, draw=True)
    case("predict_images (batch 1, workers 0, draws)", lambda p, o: _engine(detector, p, o, drawing))
    for b in args.batch_sizes:
        for w in args.workers:
            options = PredictOptions(batch_size=b, num_workers=w, draw=False)
            case(f"predict_images (batch {b}, workers {w})", lambda p, o, opt=options: _engine(detector, p, o, opt))
    decoded = [to_image_tensor(p) for p in paths]
    batch = max(args.batch_sizes)
    case(f"Detector model only (batch {batch}, decoded)", lambda p, o: model_only(detector, decoded[:len(p)], batch))
    if not args.no_hf:
        pipe = hf_pipeline(weights, detector, work, args.device)
        for b in (1, batch):
            case(f"transformers pipeline (batch {b})", lambda p, o, b=b: pipe(p, b))
    return rows


def _engine(detector: Detector, paths: list[Path], out: Path, options: PredictOptions) -> None:
    predict_images(detector, paths, out, options)


def table(rows: list[tuple[str, float | str]], count: int, command: str, device: str) -> str:
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    if device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name()}"
    base = rows[0][1]
    assert isinstance(base, float)
    lines = [f"`{command}` ({datetime.date.today()}, {machine}, {torch.get_num_threads()} threads, {count} images)",
             "", "| method | s | images/s | speed vs old loop |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s:.2f} | {count / s:.1f} | {base / s:.2f}x |" if isinstance(s, float)
              else f"| {name} | {s} | | |" for name, s in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = collect_images([args.folder]) if args.folder else make_images(work / "images", args.images, args.scale)
        detector, weights = load_detector(args, work)
        rows = measure(args, detector, weights, paths, work)
    command = "python benchmarks/predict_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = table(rows, len(paths), command.strip(), args.device)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
