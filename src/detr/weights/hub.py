"""Downloads of weights into a local cache, checked against a published SHA-256 prefix.

Files land in `$DETR_CACHE`, else torch.hub's checkpoints folder (shared with torch.hub),
with a progress bar. Without network access, the error says which address to fetch and
where to put the file. HuggingFace hub ids (`facebook/detr-resnet-50`) are fetched by
`huggingface_hub` (an optional package), into its own cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.error import URLError

import torch

from ..checkpoint import first_line


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


# A HuggingFace hub id: owner/name (no file suffix: a missing local file is not taken for one).
_HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".pdparams", ".json")


def is_hf_repo_id(name: str) -> bool:
    """Whether `name` reads as a HuggingFace hub id such as facebook/detr-resnet-50."""
    return bool(_HF_REPO_ID.match(name)) and not name.endswith(_FILE_SUFFIXES)


def hf_local_folder(repo_id: str) -> Path:
    """Where the files of hub id `repo_id` may be put by hand: `cache_dir()`/huggingface/<owner>--<name>."""
    return cache_dir() / "huggingface" / repo_id.replace("/", "--")


def hf_download(repo_id: str) -> Path:
    """A local folder with `repo_id`'s config.json, weights and (if any) preprocessor_config.json.

    The folder `hf_local_folder(repo_id)` is used when it holds a config.json (no network needed); else
    `huggingface_hub` downloads into its own cache (model.safetensors, or pytorch_model.bin where the repository
    has no safetensors file).

    Raises:
        WeightsError: huggingface_hub is not installed, or the download failed (offline, no such repository);
            the message names the files to fetch and the folder to put them in.
    """
    local = hf_local_folder(repo_id)
    if (local / "config.json").is_file():
        return local
    help_text = (f"download config.json and model.safetensors from https://huggingface.co/{repo_id} on a machine "
                 f"with network access and put them in {local} (or pass the folder holding them)")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError:
        raise WeightsError(f"{repo_id}: reading a HuggingFace hub id needs huggingface_hub (pip install "
                           f"'detr-aligned[hf]'); or {help_text}") from None
    try:
        folder = Path(hf_hub_download(repo_id, "config.json")).parent  # all files of a revision land together
        for name, alternative in (("model.safetensors", "pytorch_model.bin"), ("preprocessor_config.json", None)):
            try:
                hf_hub_download(repo_id, name)
            except EntryNotFoundError:  # not in the repository (or offline and not in the cache)
                if alternative is not None:
                    hf_hub_download(repo_id, alternative)
    except Exception as e:  # huggingface_hub raises many types: offline, unknown repository, gated, HTTP
        raise WeightsError(f"{repo_id}: could not fetch it from the HuggingFace hub ({type(e).__name__}: "
                           f"{first_line(e)}); {help_text}") from None
    return folder
