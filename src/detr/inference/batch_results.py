"""The files of a folder prediction: one JSON line per finished image, appended as batches finish, and the final
files (detections.json, images.json; masks.json, panoptic.json with masks) assembled from the lines at the end.

One process appends to `detections.jsonl`; under torchrun each process appends to `detections.part{RANK}.jsonl` and
the merge folds the parts into `detections.jsonl`. A line counts only when complete (it ends with a newline and
parses), so a run killed in the middle of a write loses nothing but that line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..checkpoint import atomic_write

log = logging.getLogger(__name__)

LINES = "detections.jsonl"
PART_GLOB = "detections.part*.jsonl"


class ResultsError(ValueError):
    """An output folder whose earlier results cannot be continued; the message names the folder and why."""


def part_path(folder: Path, rank: int, world: int) -> Path:
    """The lines file a process appends to: detections.jsonl for one process, a part file per rank under torchrun."""
    return folder / LINES if world == 1 else folder / f"detections.part{rank}.jsonl"


def line_files(folder: Path) -> list[Path]:
    """Every lines file in `folder`: detections.jsonl first, then the part files."""
    main = folder / LINES
    return ([main] if main.is_file() else []) + sorted(folder.glob(PART_GLOB))


def read_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The complete lines of `path` (raw text, parsed); a last line without its newline is a cut write: skipped."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                entry = json.loads(raw)
            except ValueError:
                log.warning("%s: skipped a line that is not JSON", path)
                continue
            if isinstance(entry, dict) and isinstance(entry.get("index"), int):
                yield raw.decode().rstrip("\n"), entry


def finished_lines(folder: Path) -> dict[int, tuple[str, str]]:
    """Image index -> (its line, its file name), over every lines file of `folder` (the first line of an index
    wins). Lines are kept as text: parsed they would take several times the memory on a large job."""
    found: dict[int, tuple[str, str]] = {}
    for path in line_files(folder):
        for raw, entry in read_lines(path):
            found.setdefault(entry["index"], (raw, str(entry.get("file_name"))))
    return found


def clear(folder: Path) -> None:
    """Remove the lines files of an earlier run (a fresh run replaces its results)."""
    for path in line_files(folder):
        path.unlink()


def cut_partial_line(path: Path) -> None:
    """Truncate `path` after its last newline: a line cut by a kill is dropped before appending."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.info("%s: dropped an incomplete last line (the run was stopped while writing it)", path)
            f.truncate(end)


class LineWriter:
    """Appends JSON lines to one file and flushes after each batch, so a kill keeps every finished image."""

    def __init__(self, path: Path):
        cut_partial_line(path)
        self.path = path
        self._file: IO[str] = open(path, "a", encoding="utf-8")

    def write(self, entries: Iterable[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(e) + "\n" for e in entries))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class Summary:
    """What a folder prediction wrote: counts, the skipped files with the reason, and where."""

    output: Path
    images: int = 0
    detections: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    drawn: bool = False


def merge(folder: Path, file_names: list[str], masks: bool) -> Summary:
    """Assemble the final files from every lines file, in the order of the job's images, and remove the parts.

    Args:
        folder: the output folder.
        file_names: the job's images, by index (the file name each line must have).
        masks: also write masks.json and panoptic.json.
    """
    lines = finished_lines(folder)
    check_lines(folder, lines, file_names)
    missing = [file_names[i] for i in range(len(file_names)) if i not in lines]
    if missing:
        raise ResultsError(f"{folder}: no results for {len(missing)} image(s), e.g. {missing[0]}: a process stopped "
                           "early; run again with --resume")
    ordered = [lines[i][0] for i in range(len(file_names))]

    def good() -> Iterator[dict[str, Any]]:  # each pass parses again: memory stays that of the text
        return (e for e in map(json.loads, ordered) if "error" not in e)

    summary = Summary(folder)
    for entry in map(json.loads, ordered):
        if "error" in entry:
            summary.skipped.append((entry["file_name"], entry["error"]))
        else:
            summary.images += 1
            summary.detections += len(entry["detections"])
    _write_list(folder / "detections.json", (d for e in good() for d in e["detections"]))
    _write_list(folder / "images.json", (_image_entry(e) for e in good()))
    if masks:
        _write_list(folder / "masks.json", (m for e in good() for m in e["masks"]))
        _write_list(folder / "panoptic.json", (e["panoptic"] for e in good()), wrap="annotations")
    _write_text(folder / LINES, (raw + "\n" for raw in ordered))
    for part in sorted(folder.glob(PART_GLOB)):
        part.unlink()
    return summary


def check_lines(folder: Path, lines: dict[int, tuple[str, str]], file_names: list[str]) -> None:
    """Earlier lines must be of this job's images: the same file at the same index."""
    for index, (_, name) in lines.items():
        if index >= len(file_names) or name != file_names[index]:
            now = file_names[index] if index < len(file_names) else "nothing"
            raise ResultsError(f"{folder}: its results are of another job (image {index} was {name}, now {now}); "
                               "give a new --output_dir or leave out --resume")


def _image_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """images.json's entry of one image (as detr predict has always written it)."""
    image = {"id": entry["image_id"], "file_name": entry["file_name"], "height": entry["height"],
             "width": entry["width"]}
    if "picture" in entry:
        image["picture"] = entry["picture"]
    return image


def _write_list(path: Path, items: Iterable[Any], wrap: str | None = None) -> None:
    """Write a JSON list item by item, byte for byte what json.dumps of the whole list gives (memory stays flat)."""
    def pieces() -> Iterator[str]:
        yield "{" + json.dumps(wrap) + ": [" if wrap else "["
        for n, item in enumerate(items):
            yield (", " if n else "") + json.dumps(item)
        yield "]}" if wrap else "]"
    _write_text(path, pieces())


def _write_text(path: Path, pieces: Iterable[str]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for piece in pieces:
                f.write(piece)
    atomic_write(path, write)
