"""Weights by name or path: cache, download with hash check, offline message. No network is used."""

from __future__ import annotations

import dataclasses
import email.message
import hashlib
import io
import shutil
from urllib.error import URLError

import pytest
import torch

from detr import registry
from detr.checkpoint import CheckpointError
from detr.registry import PUBLISHED as REGISTRY
from detr.weights.hub import WeightsError, cache_dir
from detr.weights.loading import load_pretrained, resolve_weights

from ..helpers.predict import one_thread, save_official, tiny_model  # noqa: F401  (autouse fixture)

# The hash prefixes published in the official hubconf file names, written out independently.
HASHES = {"detr_r50": "e632da11", "detr_r50_dc5": "f0fb7ef5", "detr_r101": "2c7b67e5",
          "detr_r101_dc5": "a2e86def", "detr_r50_panoptic": "00ce5173", "detr_r50_dc5_panoptic": "da08f1b1",
          "detr_r101_panoptic": "40021d53"}


class FakeResponse(io.BytesIO):
    """What `urlopen` returns, serving `data`."""

    def info(self):
        headers = email.message.Message()
        headers["Content-Length"] = str(len(self.getvalue()))
        return headers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DETR_CACHE", str(folder))
    return folder


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)


def serve(monkeypatch, data: bytes) -> list[str]:
    """Make torch.hub's real downloader read `data` for any URL; returns the URLs asked for."""
    asked: list[str] = []

    def fake_urlopen(request, *args, **kwargs):
        asked.append(request.full_url)
        return FakeResponse(data)

    monkeypatch.setattr(torch.hub, "urlopen", fake_urlopen)
    return asked


def test_published_names_and_hash_prefixes():
    assert set(REGISTRY) == set(HASHES)
    for name, published in REGISTRY.items():
        assert published.url.startswith("https://dl.fbaipublicfiles.com/detr/")
        assert published.hash_prefix == HASHES[name]
        assert published.url.endswith(f"-{HASHES[name]}.pth")
        classes = 250 if name.endswith("_panoptic") else 91  # COCO panoptic's category ids reach 200
        assert published.architecture == name and published.num_classes == len(published.class_names) == classes
        assert (published.val_scale, published.max_size) == (800, 1333)  # the official evaluation size


def test_cache_dir_follows_env_then_torch_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("DETR_CACHE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert cache_dir() == tmp_path / "hub" / "checkpoints"
    monkeypatch.setenv("DETR_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_local_file_is_used_as_is(tmp_path, no_network):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    assert resolve_weights(path) == path
    assert resolve_weights(str(path)) == path


def test_folder_and_unknown_name_are_refused(tmp_path, no_network):
    with pytest.raises(WeightsError, match="is a folder"):
        resolve_weights(tmp_path)
    with pytest.raises(WeightsError, match="not a published model name.*detr_r50, detr_r50_dc5"):
        resolve_weights("detr_r18")


def test_cached_file_is_used_without_network(cache, no_network):
    cache.mkdir()
    cached = cache / "detr-r101-2c7b67e5.pth"
    cached.write_bytes(b"weights")
    assert resolve_weights("detr_r101") == cached


def test_download_goes_to_cache_with_hash_check(cache, monkeypatch):
    data = b"pretend these are weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    url = f"https://example.invalid/detr/detr-r50-{digest[:8]}.pth"
    monkeypatch.setitem(registry.PUBLISHED, "detr_r50", dataclasses.replace(REGISTRY["detr_r50"], url=url))
    asked = serve(monkeypatch, data)
    path = resolve_weights("detr_r50", progress=False)
    assert path == cache / f"detr-r50-{digest[:8]}.pth"
    assert path.read_bytes() == data
    assert asked == [url]
    assert resolve_weights("detr_r50") == path  # second time: from the cache
    assert len(asked) == 1


def test_hash_mismatch_keeps_nothing(cache, monkeypatch):
    asked = serve(monkeypatch, b"a tampered or truncated file")
    with pytest.raises(WeightsError, match="SHA-256 does not start with e632da11") as err:
        resolve_weights("detr_r50", progress=False)
    assert asked == [REGISTRY["detr_r50"].url]
    assert str(cache / "detr-r50-e632da11.pth") in str(err.value)
    assert list(cache.iterdir()) == []  # neither the file nor a partial download


def test_offline_message_says_what_to_download_and_where(cache, no_network):
    with pytest.raises(WeightsError) as err:
        resolve_weights("detr_r50_dc5", progress=False)
    message = str(err.value)
    assert "https://dl.fbaipublicfiles.com/detr/detr-r50-dc5-f0fb7ef5.pth" in message
    assert str(cache / "detr-r50-dc5-f0fb7ef5.pth") in message
    assert "name resolution" in message


def test_unwritable_cache_is_explained(tmp_path, monkeypatch, no_network):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DETR_CACHE", str(blocker / "cache"))
    with pytest.raises(WeightsError, match="cannot create the weights cache folder.*DETR_CACHE"):
        resolve_weights("detr_r50")


def test_name_loads_cached_official_file_with_name_options(cache, no_network):
    """A published name (its file name) gives what shapes cannot: dilation for DC5 (R50 checked against the
    file's blocks), and COCO's class names."""
    model = tiny_model(backbone="resnet50", nheads=8)
    cache.mkdir()
    save_official(model, cache / "detr-r50-e632da11.pth")
    shutil.copy(cache / "detr-r50-e632da11.pth", cache / "detr-r50-dc5-f0fb7ef5.pth")
    shutil.copy(cache / "detr-r50-e632da11.pth", cache / "detr-r101-2c7b67e5.pth")
    plain, cfg = load_pretrained("detr_r50")
    dc5, _ = load_pretrained("detr_r50_dc5")
    assert cfg.data.class_names[1] == "person" and len(cfg.data.class_names) == 91
    assert plain.backbone[0].body.layer4[1].conv2.dilation == (1, 1)
    assert dc5.backbone[0].body.layer4[1].conv2.dilation == (2, 2)
    for net in (plain, dc5):
        for k, v in model.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="holds resnet50 weights, but resnet101 was asked for"):
        load_pretrained("detr_r101")
