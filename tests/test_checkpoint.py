"""Checkpoint files: atomic writes, and refusal of anything that is not a plain checkpoint."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from detr.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint


class _Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_state():
    return {"w": torch.randn(3, 4), "b": torch.zeros(3)}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_roundtrip_keeps_weights_and_config(tmp_path, suffix):
    path = tmp_path / f"ckpt{suffix}"
    state = tiny_state()
    save_checkpoint(path, {"model": state, "config": {"model": {"num_classes": 5}}})
    loaded = load_checkpoint(path)
    assert loaded["config"] == {"model": {"num_classes": 5}}
    for k, v in state.items():
        assert torch.equal(loaded["model"][k], v)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_state(), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*refused"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="raw.pth"):
        load_checkpoint(raw)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"hello world", os.urandom(4096)],
                         ids=["empty", "zeros", "text", "random"])
def test_garbage_is_refused_with_the_file_name(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth") as err:
        load_checkpoint(path)
    assert "could run code" not in str(err.value)  # corrupt, not malicious


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "full.pth"
    save_checkpoint(path, {"model": {"w": torch.randn(256, 256)}})
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(tmp_path / "cut.pth")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}})

    def disk_full(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_weights_that_do_not_fit_are_explained():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(CheckpointError, match=r"weight: checkpoint \(5, 4\) vs model \(3, 4\)"):
        load_model_weights(model, {"weight": torch.zeros(5, 4), "bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="missing"):
        load_model_weights(model, {"weight": torch.zeros(3, 4)})
    load_model_weights(model, {"weight": torch.ones(3, 4), "bias": torch.zeros(3)})
    assert torch.equal(model.weight, torch.ones(3, 4))
