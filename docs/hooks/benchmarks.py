"""A MkDocs hook: BENCHMARKS.md (at the repository root, where GitHub shows it) becomes a page of the site,
with the pictures it shows, so the docs link to `BENCHMARKS.md` and the file is kept in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Add BENCHMARKS.md and the PNG files under benchmarks/ that it links to."""
    shown = [Path("BENCHMARKS.md"), *sorted(p.relative_to(ROOT) for p in (ROOT / "benchmarks").rglob("*.png"))]
    for rel in shown:
        files.append(File(rel.as_posix(), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
