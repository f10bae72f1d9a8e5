"""Downloads of weights into a local cache, checked against a published SHA-256 prefix.

Files land in `$DETR_CACHE`, else torch.hub's checkpoints folder (shared with torch.hub),
with a progress bar. Without network access, the error says which address to fetch and
where to put the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch


class WeightsError(ValueError):
    """Weights that cannot be found or fetched; the message says what to do."""


def cache_dir() -> Path:
    """The folder holding downloaded weights: `$DETR_CACHE`, else torch.hub's checkpoints folder."""
    env = os.environ.get("DETR_CACHE")
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix(url: str) -> str:
    """The SHA-256 prefix published in a file name such as `detr-r50-e632da11.pth`."""
    stem = url.rsplit("/", 1)[-1].split(".", 1)[0]
    return stem.rsplit("-", 1)[-1]


def cached_download(url: str, progress: bool = True) -> Path:
    """`url`'s file in `cache_dir()`, downloaded (with its hash check) on first use."""
    dst = cache_dir() / url.rsplit("/", 1)[-1]
    if not dst.is_file():
        download(url, dst, progress=progress)
    return dst


def download(url: str, dst: Path, progress: bool = True) -> None:
    """Download `url` to `dst` (via a temporary file) and check its SHA-256 prefix.

    Raises:
        WeightsError: the folder cannot be created, the download failed, or the hash
            does not match (the partial file is removed, `dst` is not created).
    """
    help_text = (f"download {url} on a machine with network access and put it at {dst} "
                 f"(or set DETR_CACHE to the folder holding it, or pass the file's path instead of a name)")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights cache folder {dst.parent} ({e.strerror}); "
                           f"set DETR_CACHE to a writable folder, or {help_text}") from None
    expected = hash_prefix(url)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=expected, progress=progress)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        raise WeightsError(f"{url}: the downloaded file is corrupt or not the published one: its SHA-256 "
                           f"does not start with {expected} ({e}); nothing was saved. Try again, or "
                           f"{help_text}") from None
    except (URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"could not download the weights ({reason}); {help_text}") from None
