"""The README and the documentation site: the site builds strictly, and every README command runs.

Each command of the README's fenced bash blocks must have an exercise in COMMANDS below (a README command
without one fails `test_every_readme_command_has_an_exercise`), and each python block runs as it is. They run
offline, in a folder this test fills with small data written by its own writers, with a small model: the
train commands get SMALL_TRAIN_FLAGS appended (argparse keeps the last value of a flag), `detr.train` gets
SMALL_OPTIONS. A published name such as `detr_r50` cannot be downloaded here: a small checkpoint of ours is put
under the published file name in `$DETR_CACHE`, where `detr.hub.cached_download` finds it without network,
and the downloader is replaced by one that fails the test if it is ever called.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import detr
from detr import cli
from detr.checkpoint import load_checkpoint, save_checkpoint
from detr.config import Config, DataConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Cases that need features landing on other branches (`--data DIR` and `detr.train`: branch `data`). They run
# and must fail until then (strict xfail): empty this set once those branches are merged.
PENDING: set[str] = set()

# A model small enough that a CPU step takes a fraction of a second; the cached "published" model has the same
# architecture, so fine-tuning from it loads every weight but the class head.
SMALL_MODEL = {"backbone": "tiny", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
               "dim_feedforward": 64, "num_queries": 8, "dropout": 0.0}
SMALL_DATA = {"scales": [64], "max_size": 96, "val_scale": 64}
SMALL_OPTIONS = {**SMALL_MODEL, **SMALL_DATA, "backbone_weights": "none", "random_crop": False, "num_workers": 0,
                 "batch_size": 2, "epochs": 1, "lr_drop": 100, "device": "cpu"}
SMALL_TRAIN_FLAGS = [
    "--backbone", "tiny", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1",
    "--dec_layers", "1", "--dim_feedforward", "64", "--num_queries", "8", "--dropout", "0", "--scales", "64",
    "--max_size", "96", "--val_scale", "64", "--no_random_crop", "--num_workers", "0", "--batch_size", "2",
    "--epochs", "1", "--lr_drop", "100", "--device", "cpu",
]
# Absolute paths in the README that stand for data the reader has: the workspace's copy replaces them.
PATHS = {"/data/coco": "coco"}
PUBLISHED_FILE = "detr-r50-e632da11.pth"  # detr_r50's published file name (registry.PUBLISHED)
SHAPES = [(1, "square"), (2, "circle")]


# ---- reading the README ----

def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def bash_commands(body: str) -> list[str]:
    """A bash block's commands, continuation lines joined and comments dropped, words single-spaced."""
    joined = re.sub(r"\\\n", " ", body)
    return [" ".join(words) for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def inline_commands(text: str) -> list[str]:
    """Commands quoted in the prose (`detr ...`, `bash ...`, `torchrun ...`), outside the fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [" ".join(shlex.split(m)) for m in re.findall(r"`((?:detr|bash|torchrun|python -m detr) [^`]+)`", prose)]


def readme_cases() -> list[tuple[str, str]]:
    """(id, text) of each README case: a bash command, in a block or quoted in the prose (its id is the
    command), or a python block (its id is `python: ` and its first line that is not an import)."""
    text = README.read_text()
    cases = [(cmd, cmd) for cmd in inline_commands(text)]
    for lang, body in fenced_blocks(text):
        if lang == "bash":
            cases += [(cmd, cmd) for cmd in bash_commands(body)]
        elif lang == "python":
            first = next(line for line in body.splitlines() if line.strip() and not line.startswith("import"))
            cases.append((f"python: {first.split('#')[0].strip()}", body))
    return cases


# ---- the workspace: small data in each layout, a cached "published" model, a trained run ----

def write_image(path: Path, boxes: list[tuple[int, list[float]]], size: tuple[int, int] = (80, 64)) -> None:
    """A grey picture with each box drawn as a filled shape of its class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (90, 90, 90))
    draw = ImageDraw.Draw(img)
    for cat, (x, y, w, h) in boxes:
        (draw.rectangle if cat == 1 else draw.ellipse)([x, y, x + w, y + h], fill=(230, 40 * cat, 30))
    img.save(path)


def boxes_of(i: int) -> list[tuple[int, list[float]]]:
    """A square and a circle inside the 80x64 picture, placed a little differently for each image."""
    return [(1, [4.0 + 3 * (i % 5), 6.0, 24.0, 20.0]), (2, [44.0, 20.0 + 2 * (i % 5), 22.0, 26.0])]


def write_coco_split(images_dir: Path, ann_file: Path, n: int, start: int, supercategory: bool) -> None:
    """n images and a COCO instances JSON; with `supercategory`, a Roboflow export's id-0 parent category."""
    images, anns = [], []
    for k in range(n):
        i = start + k
        name = f"img{i}.jpg"
        write_image(images_dir / name, boxes_of(i))
        images.append({"id": i, "file_name": name, "width": 80, "height": 64})
        anns += [{"id": 10 * i + j, "image_id": i, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                  "iscrowd": 0} for j, (cat, box) in enumerate(boxes_of(i))]
    cats = [{"id": cid, "name": name, "supercategory": "shapes"} for cid, name in SHAPES]
    if supercategory:
        cats.insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def write_video(path: Path, frames: int = 6) -> None:
    """A short MPEG-4 clip of the test's shapes moving right (PyAV, the `video` extra)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for i in range(frames):
            picture = Image.new("RGB", (80, 64), (90, 90, 90))
            ImageDraw.Draw(picture).rectangle([4 + 4 * i, 6, 28 + 4 * i, 26], fill=(230, 40, 30))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(picture), format="rgb24")))
        container.mux(stream.encode(None))


def small_published_model(path: Path) -> None:
    """A small checkpoint of ours with 91 COCO classes, confident on class 1, saved where detr_r50 is looked up."""
    torch.manual_seed(0)
    model = detr.create_model("detr_r50", num_classes=91, **SMALL_MODEL).eval()
    with torch.no_grad():
        model.class_embed.bias[1] += 6.0  # scores above the README's 0.7 threshold, so there is something to show
    cfg = Config(model=ModelConfig(**SMALL_MODEL, num_classes=91), data=DataConfig(**SMALL_DATA))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict()})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding what the README's commands read: my_dataset/ (a Roboflow COCO export), coco/ (COCO 2017
    layout), photos/ and single images, the cache with detr_r50, and runs/mine from a small training run."""
    ws = tmp_path_factory.mktemp("readme")
    for split, n, start in (("train", 6, 0), ("valid", 2, 100)):
        write_coco_split(ws / "my_dataset" / split, ws / "my_dataset" / split / "_annotations.coco.json", n, start,
                         supercategory=True)
    for split, n, start in (("train2017", 4, 0), ("val2017", 2, 100)):
        write_coco_split(ws / "coco" / split, ws / "coco" / "annotations" / f"instances_{split}.json", n, start,
                         supercategory=False)
    for name in ("photos/p1.jpg", "photos/p2.png", "a.jpg", "b.png", "photo.jpg"):
        write_image(ws / name, boxes_of(3))
    write_video(ws / "street.mp4")
    small_published_model(ws / "cache" / PUBLISHED_FILE)
    with in_workspace(ws):
        split = "my_dataset/{0}", "my_dataset/{0}/_annotations.coco.json"
        flags = [f"--train_images={split[0].format('train')}", f"--train_annotations={split[1].format('train')}",
                 f"--val_images={split[0].format('valid')}", f"--val_annotations={split[1].format('valid')}"]
        assert run_detr(["train", *flags, *SMALL_TRAIN_FLAGS, "--output_dir", "runs/mine"]) == 0
    return ws


@contextlib.contextmanager
def in_workspace(ws: Path):
    """cwd = the workspace, $DETR_CACHE = its cache, and no download possible."""
    def no_download(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a README command tried to download {url}")

    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(ws)
        mp.setenv("DETR_CACHE", str(ws / "cache"))
        mp.setattr(torch.hub, "download_url_to_file", no_download)
        yield
    finally:
        mp.undo()


def run_detr(argv: list[str]) -> int:
    """`detr argv` in this process; argparse's exits count as exit codes."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


# ---- the exercises: how each README command runs here, and what it must leave ----

def localised(words: list[str]) -> list[str]:
    return [PATHS.get(w, w) for w in words]


def train(words: list[str], ws: Path) -> None:
    out = Path(words[words.index("--output_dir") + 1]) if "--output_dir" in words else Path("outputs")
    assert run_detr([*localised(words[1:]), *SMALL_TRAIN_FLAGS]) == 0
    assert (ws / out / "checkpoint.pth").is_file() and (ws / out / "log.txt").is_file()
    for name in ("per_class.json", "pr_curves.png", "confusion_matrix.png", "confusion_matrix.json"):
        assert (ws / out / "eval" / name).is_file(), name  # what the README says each evaluation writes
    assert (ws / out / "data.png").is_file()
    assert len(load_checkpoint(ws / out / "checkpoint.pth")["config"]["data"]["class_names"]) >= 2


def evaluate(words: list[str], ws: Path) -> None:
    assert run_detr(localised(words[1:])) == 0


def predict(words: list[str], ws: Path) -> None:
    out = ws / words[words.index("--output_dir") + 1]
    assert run_detr(localised(words[1:])) == 0
    assert sorted(p.suffix for p in out.glob("*.png")) == [".png", ".png"] and list(out.glob("*.json"))


def video(words: list[str], ws: Path) -> None:
    out = ws / words[words.index("--output_dir") + 1]
    assert run_detr(localised(words[1:])) == 0
    assert (out / "annotated.mp4").is_file()
    assert len((out / "frames.jsonl").read_text().splitlines()) == 6  # one line per frame


def explain(words: list[str], ws: Path) -> None:
    out = ws / words[words.index("--output_dir") + 1]
    assert run_detr(localised(words[1:])) == 0
    assert list(out.glob("*.png"))


def export(words: list[str], ws: Path) -> None:
    out = ws / words[words.index("--output") + 1]
    assert run_detr(localised(words[1:])) == 0
    assert out.is_file() and out.stat().st_size > 0


def plot(words: list[str], ws: Path) -> None:
    out = ws / words[words.index("--output") + 1]
    assert run_detr(localised(words[1:])) == 0
    with Image.open(out) as picture:
        assert picture.format == "PNG"


def demo_script(words: list[str], ws: Path) -> None:
    """scripts/demo.sh sets up .venv (not repeated here) and then runs `detr demo`: run that, small."""
    script = (REPO / words[1]).read_text().strip().splitlines()
    assert script[-1] == 'exec .venv/bin/detr demo "$@"', script[-1]
    assert run_detr(["demo", "--epochs", "1", "--num_train", "8", "--num_val", "2", "--backbone_warmup", "1",
                     "--output_dir", "runs/demo"]) == 0
    assert (ws / "runs" / "demo" / "predictions.png").is_file()


def suite_script(words: list[str], ws: Path) -> None:
    """scripts/test.sh runs this very suite, so it is checked rather than run: valid bash, set-up, then pytest."""
    path = REPO / words[1]
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    lines = path.read_text().strip().splitlines()
    assert "bash scripts/setup.sh" in lines and lines[-1] == 'exec .venv/bin/python -m pytest -q "$@"', lines


COMMANDS: dict[str, Callable[[list[str], Path], None]] = {
    "bash scripts/demo.sh": demo_script,
    "bash scripts/test.sh": suite_script,
    "detr predict photos/ --weights detr_r50 --output_dir out/": predict,
    "detr explain photo.jpg --weights detr_r50 --output_dir attention/": explain,
    "detr predict street.mp4 --weights detr_r50 --track --output_dir video_out/": video,
    "detr train --data my_dataset --epochs 50 --output_dir runs/mine": train,
    "detr train --train_images my_dataset/train --train_annotations my_dataset/train/_annotations.coco.json "
    "--val_images my_dataset/valid --val_annotations my_dataset/valid/_annotations.coco.json "
    "--weights detr_r50 --epochs 50 --lr_drop 40 --output_dir runs/mine": train,
    "detr plot runs/mine --output curves.png": plot,
    "detr eval --weights runs/mine/best.pth": evaluate,
    "detr eval --weights detr_r50 --coco_path /data/coco": evaluate,
    "detr export --weights runs/mine/best.pth --output detr.onnx": export,
    "detr export --weights runs/mine/best.pth --postprocess --output detr_boxes.onnx --verify": export,
    "detr export --weights runs/mine/best.pth --format openvino --output detr.xml": export,
}


def run_python_block(body: str, ws: Path) -> None:
    """Run a README python block as it is; `detr.train` (when it exists) gets the small model's options."""
    real_train = getattr(detr, "train", None)
    mp = pytest.MonkeyPatch()
    if real_train is not None:
        mp.setattr(detr, "train", lambda **options: real_train(**{**options, **SMALL_OPTIONS}))
    try:
        exec(compile(body, str(README), "exec"), {"__name__": "__readme__"})
    finally:
        mp.undo()


CASES = readme_cases()


def test_every_readme_command_has_an_exercise():
    unknown = [cid for cid, _ in CASES if not cid.startswith("python: ") and cid not in COMMANDS]
    assert not unknown, f"README commands without an exercise in tests/test_docs.py COMMANDS: {unknown}"
    stale = set(COMMANDS) - {cid for cid, _ in CASES}
    assert not stale, f"exercises of commands no longer in the README: {stale}"
    assert PENDING <= {cid for cid, _ in CASES}, "PENDING names a case the README no longer has"


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    pytest.param(case, id=case[0], marks=[pytest.mark.xfail(strict=True, reason="lands with another branch: PENDING")]
                 if case[0] in PENDING else []) for case in CASES])
def test_readme_case_runs(case, workspace):
    cid, text = case
    with in_workspace(workspace):
        if cid.startswith("python: "):
            run_python_block(text, workspace)
        else:
            words = shlex.split(cid)
            COMMANDS[cid](words, workspace)


def test_readme_links_point_to_files():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert links and not missing, f"README links to missing files: {missing}"


def test_api_reference_lists_every_public_name():
    api = (REPO / "docs" / "api.md").read_text()
    missing = [name for name in detr.__all__ if f"::: detr.{name}\n" not in api]
    assert not missing, f"docs/api.md lacks an entry for detr.{missing}"


def test_docs_site_builds_strictly(tmp_path):
    """A broken link, a missing page or an API name that cannot be found fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
