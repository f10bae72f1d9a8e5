"""transformers checkpoint folders both ways, against transformers 5.24.0 (random weights, tiny configs).

Reading: a `DetrForObjectDetection` / `ConditionalDetrForObjectDetection` saved with `save_pretrained`, in each
backbone layout, is loaded by `Detector.from_pretrained(folder)`; on the same preprocessed tensor its logits are
within 1e-4 and its boxes within 1e-5 of transformers' model, and its detections are those of transformers'
`post_process_object_detection`. The transformers models have `auxiliary_loss=False`: with it, their decoder feeds
each layer's LayerNorm'd output to the next layer, which the official decoder (ours) does not.

The timm layout (the one facebook/detr-resnet-50 is stored in: timm's ResNet under
`model.backbone.conv_encoder.model.`, whose names are torchvision's, with `downsample.1.num_batches_tracked`
counters) is made here from the saved HF-ResNet model by renaming its backbone keys and marking config.json
`use_timm_backbone`, so that the same transformers model is the reference. The DC5 round trip builds a genuine
timm-backed model (timm is in the dev extra: transformers builds DC5 only on timm's ResNet).

Writing: ours -> `detr convert --to hf` -> transformers' `from_pretrained` with no missing, unexpected or
mismatched key -> the same outputs.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    ConditionalDetrImageProcessor,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    ResNetConfig,
)

import detr
from detr import cli
from detr.checkpoint import CheckpointError, save_checkpoint
from detr.config import Config, DataConfig
from detr.inference.detector import Detector
from detr.registry import model_config
from detr.weights.hub import WeightsError, hf_local_folder
from detr.weights.loading import load_pretrained

from ..helpers.hf_conditional import padded, two_images

# COCO-like: category ids with a gap named "N/A", indexed by class id as the class head's rows.
NAMES = ["N/A", "cat", "dog", "N/A", "bird", "fish", "cow", "hen", "owl", "bee", "ant", "elk"]
SMALL = dict(use_pretrained_backbone=False, num_queries=8, d_model=32, encoder_layers=2, decoder_layers=2,
             encoder_ffn_dim=48, decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4,
             dropout=0.0, auxiliary_loss=False, init_std=0.2, id2label=dict(enumerate(NAMES)))
KINDS = {"detr": (DetrConfig, DetrForObjectDetection, DetrImageProcessor),
         "conditional_detr": (ConditionalDetrConfig, ConditionalDetrForObjectDetection, ConditionalDetrImageProcessor)}
TRUNK = "model.backbone.conv_encoder.model."


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """LayerNorms, biases and frozen BatchNorms away from their identity-like initial values, and queries spread
    (distinct boxes and scores, so that rankings have no near-ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point() and t.dim() == 1:
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith(("query_position_embeddings.weight", "query_embed.weight")):
                t.normal_(0, 1, generator=g)
            elif re.search(r"(ref_point_head|bbox_predictor|bbox_embed)\.layers\.\d\.weight", name):
                t.normal_(0, 0.3, generator=g)


def _hf_model(kind: str, seed: int = 0, **extra):
    """A random transformers model on transformers' own ResNet-18 (no timm, no download)."""
    torch.manual_seed(seed)
    config_cls, model_cls, _ = KINDS[kind]
    resnet = ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic",
                          out_features=["stage4"])
    model = model_cls(config_cls(use_timm_backbone=False, backbone=None, backbone_config=resnet,
                                 **{**SMALL, **extra})).eval()
    _randomise(model, seed)
    return model


def _to_timm_layout(folder: Path) -> None:
    """Rewrite a saved HF-ResNet folder in the timm layout: torchvision's names for the trunk, timm in config.json."""
    hf_resnet = [
        (r"embedder\.embedder\.convolution\.", "conv1."), (r"embedder\.embedder\.normalization\.", "bn1."),
        (r"encoder\.stages\.(\d)\.layers\.(\d)\.shortcut\.convolution\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
        (r"encoder\.stages\.(\d)\.layers\.(\d)\.shortcut\.normalization\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
        (r"encoder\.stages\.(\d)\.layers\.(\d)\.layer\.(\d)\.convolution\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
        (r"encoder\.stages\.(\d)\.layers\.(\d)\.layer\.(\d)\.normalization\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    ]
    state = {}
    for key, value in load_file(folder / "model.safetensors").items():
        if key.startswith(TRUNK):
            rest = key[len(TRUNK):]
            for pattern, replacement in hf_resnet:
                rest = re.sub("^" + pattern, replacement, rest)
            key = TRUNK + rest
        state[key] = value
    for stage in range(2, 5):  # what the hub files hold besides the weights (unused by transformers and us)
        state[f"{TRUNK}layer{stage}.0.downsample.1.num_batches_tracked"] = torch.tensor(0)
    assert f"{TRUNK}layer2.0.downsample.0.weight" in state and f"{TRUNK}layer4.1.bn2.running_var" in state
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(use_timm_backbone=True, backbone="resnet18", backbone_config=None)
    (folder / "config.json").write_text(json.dumps(config))


def _check_detector(detector: Detector, theirs: torch.nn.Module, kind: str) -> None:
    """Same logits and boxes as transformers on the Detector's preprocessed tensor, and the detections of
    transformers' post_process_object_detection (threshold 0: every query for DETR, every query x class pair
    for Conditional DETR, as 8 x 12 < its top 100)."""
    image = torch.randint(0, 256, (3, 50, 70), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    x = detector.preprocess(image)  # [3, 64, 90]: the size preprocessor_config.json gives
    with torch.no_grad():
        ref = theirs(pixel_values=x[None], pixel_mask=torch.ones(1, *x.shape[1:], dtype=torch.long))
        got = detector.model([x])
    assert (got["pred_logits"] - ref.logits).abs().max() <= 1e-4
    assert (got["pred_boxes"] - ref.pred_boxes).abs().max() <= 1e-5
    expected = KINDS[kind][2]().post_process_object_detection(ref, threshold=0.0, target_sizes=[(50, 70)])[0]
    found = detector(image, threshold=0.0)
    assert len(found) == len(expected["scores"]) == ref.logits.shape[1] * (1 if kind == "detr" else len(NAMES))
    # matched by box, not by rank: random weights give near-equal scores, whose order float rounding decides
    unused = set(range(len(found)))
    for score, label, box in zip(expected["scores"], expected["labels"], expected["boxes"]):
        i = min((i for i in unused if found.labels[i] == label), key=lambda i: float((found.boxes[i] - box).abs().max()))
        assert (found.boxes[i] - box).abs().max() <= 1e-5 * 70  # 1e-5 of the image, in pixels
        assert abs(found.scores[i] - score) <= 1e-4 and found.names[i] == NAMES[label]
        unused.remove(i)


@pytest.mark.parametrize("layout", ["hf_resnet", "timm"])
@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_a_transformers_folder_gives_transformers_detections(kind, layout, tmp_path):
    theirs = _hf_model(kind)
    theirs.save_pretrained(tmp_path)
    KINDS[kind][2](size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    if layout == "timm":
        _to_timm_layout(tmp_path)
    detector = Detector.from_pretrained(tmp_path)
    assert (detector.size, detector.max_size, detector.class_names) == (64, 96, NAMES)
    assert detector.model.class_loss == ("softmax" if kind == "detr" else "focal")
    _check_detector(detector, theirs, kind)


def test_pytorch_model_bin_and_the_learned_position_embedding(tmp_path):
    """A folder with pytorch_model.bin (read with weights_only) instead of model.safetensors."""
    theirs = _hf_model("detr", position_embedding_type="learned")
    theirs.save_pretrained(tmp_path)
    KINDS["detr"][2](size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    detector = Detector.from_pretrained(tmp_path)
    assert detector.model.backbone[1].row_embed.weight.shape == (50, 16)
    _check_detector(detector, theirs, "detr")


def _ours(kind: str, tmp_path: Path, **extra) -> tuple[detr.DETR, Path]:
    """A random model of ours (ResNet-18, d=32) and its checkpoint file, with class names and a 64-96 px resize."""
    torch.manual_seed(1)
    name = "detr_r50" if kind == "detr" else "conditional_detr_r50"
    options = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3, dim_feedforward=48,
                   num_queries=10, dropout=0.0, **extra)
    net = detr.create_model(name, num_classes=len(NAMES), **options).eval()
    _randomise(net, seed=2)
    cfg = Config(model=model_config(name, len(NAMES), **options),
                 data=DataConfig(class_names=NAMES, val_scale=64, max_size=96))
    save_checkpoint(tmp_path / "ours.pth", {"model": net.state_dict(), "config": cfg.to_dict()})
    return net, tmp_path / "ours.pth"


def _check_loads_strictly(model_cls, folder: Path):
    theirs, info = model_cls.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info  # no missing, unexpected or mismatched key, no error
    assert theirs.config.id2label == dict(enumerate(NAMES)) and not theirs.config.auxiliary_loss
    return theirs.eval()


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_convert_to_hf_loads_strictly_in_transformers_with_the_same_outputs(kind, tmp_path):
    net, weights = _ours(kind, tmp_path)
    out = tmp_path / "hf"
    assert cli.main(["convert", "--to", "hf", str(out), "--weights", str(weights)]) == 0
    theirs = _check_loads_strictly(KINDS[kind][1], out)
    assert type(theirs.model.backbone.model).__name__ == "ResNetBackbone"  # transformers' own: no timm needed
    processor = AutoImageProcessor.from_pretrained(out)
    assert type(processor).__name__ == KINDS[kind][2].__name__ and processor.size.longest_edge == 96
    images = two_images()
    with torch.no_grad():
        ref, got = theirs(*padded(images)), net(images)
    assert (got["pred_logits"] - ref.logits).abs().max() <= 1e-4
    assert (got["pred_boxes"] - ref.pred_boxes).abs().max() <= 1e-5


def test_dc5_round_trip_through_timm(tmp_path):
    """A genuine timm-backed DC5 model (as facebook/detr-resnet-50-dc5) -> ours -> `detr convert --to hf` (from
    the folder itself) -> transformers loads it strictly; the same outputs at every step."""
    torch.manual_seed(0)
    config = DetrConfig(use_timm_backbone=True, backbone="resnet50", dilation=True, **SMALL)
    theirs = DetrForObjectDetection(config).eval()
    _randomise(theirs)
    theirs.save_pretrained(tmp_path / "theirs")
    assert f"{TRUNK}layer4.2.conv3.weight" in load_file(tmp_path / "theirs" / "model.safetensors")
    ours, cfg = load_pretrained(tmp_path / "theirs")
    assert (cfg.model.backbone, cfg.model.dilation) == ("resnet50", True)
    assert ours.backbone[0].body.layer4[1].conv2.dilation == (2, 2)
    assert cli.main(["convert", "--to", "hf", str(tmp_path / "back"), "--weights", str(tmp_path / "theirs")]) == 0
    back = _check_loads_strictly(DetrForObjectDetection, tmp_path / "back")
    images = two_images()
    with torch.no_grad():
        ref, got, again = theirs(*padded(images)), ours(images), back(*padded(images))
    for out in (got, {"pred_logits": again.logits, "pred_boxes": again.pred_boxes}):
        assert (out["pred_logits"] - ref.logits).abs().max() <= 1e-4
        assert (out["pred_boxes"] - ref.pred_boxes).abs().max() <= 1e-5


def test_what_transformers_cannot_hold_is_refused(tmp_path, capsys):
    _, weights = _ours("detr", tmp_path, pre_norm=True)
    assert cli.main(["convert", "--to", "hf", str(tmp_path / "out"), "--weights", str(weights)]) == 2
    assert "pre_norm: transformers' DETR transformer is post-norm only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli.main(["convert", "--to", "hf", str(tmp_path / "out")]) == 2
    assert "--to hf needs --weights FILE" in capsys.readouterr().err


# --- hub ids ------------------------------------------------------------------------------------------------

@pytest.fixture
def hub_repo(tmp_path, monkeypatch):
    """A fake hub: `hf_hub_download(repo_id, name)` copies tmp/repo/<name> into a snapshot folder, or raises
    huggingface_hub's error for a missing file; no network."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    monkeypatch.setenv("DETR_CACHE", str(tmp_path / "cache"))
    repo, snapshot, calls = tmp_path / "repo", tmp_path / "snapshot", []
    _hf_model("detr").save_pretrained(repo)

    def download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append((repo_id, filename))
        if not (repo / filename).is_file():
            raise EntryNotFoundError(f"404: {filename} is not in {repo_id}")
        snapshot.mkdir(exist_ok=True)
        return shutil.copy(repo / filename, snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return repo, calls


def test_a_hub_id_is_fetched_with_huggingface_hub(hub_repo):
    repo, calls = hub_repo
    net, cfg = load_pretrained("someone/detr-tiny")
    assert calls == [("someone/detr-tiny", n) for n in ("config.json", "model.safetensors", "preprocessor_config.json")]
    assert cfg.data.class_names == NAMES and net.num_queries == 8
    torch.save(load_file(repo / "model.safetensors"), repo / "pytorch_model.bin")  # an old repository: no safetensors
    (repo / "model.safetensors").unlink()
    calls.clear()
    again, _ = load_pretrained("someone/detr-tiny")
    assert [n for _, n in calls] == ["config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json"]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_hub_id_offline_or_without_huggingface_hub_says_what_to_fetch_and_where(hub_repo, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    repo, _ = hub_repo
    local = hf_local_folder("facebook/detr-resnet-50")

    def offline(repo_id: str, filename: str, **kwargs) -> str:
        raise LocalEntryNotFoundError("cannot reach huggingface.co and the file is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match="could not fetch it from the HuggingFace hub") as err:
        Detector.from_pretrained("facebook/detr-resnet-50")
    for text in ("config.json", "model.safetensors", "https://huggingface.co/facebook/detr-resnet-50", str(local)):
        assert text in str(err.value)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(WeightsError, match=r"needs huggingface_hub \(pip install 'detr-aligned\[hf\]'\)") as err:
        Detector.from_pretrained("facebook/detr-resnet-50")
    assert str(local) in str(err.value) and "model.safetensors" in str(err.value)
    shutil.copytree(repo, local)  # put there by hand: read without the package
    assert Detector.from_pretrained("facebook/detr-resnet-50").class_names == NAMES


# --- refusals -----------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the payload ran"))


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hf"
    _hf_model("detr").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("zipped", [True, False])
def test_a_pytorch_model_bin_that_would_run_code_is_refused_and_never_runs(tmp_path, zipped):
    """torch.save's zip format and its legacy format (files written before torch 1.6)."""
    folder = _folder(tmp_path)
    marker, path = tmp_path / "marker", folder / "pytorch_model.bin"
    evil = {**load_file(folder / "model.safetensors"), "model.evil": _Payload(marker)}
    (folder / "model.safetensors").unlink()
    torch.save(evil, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": refused to load: it references Python "
                                              "objects other than tensors"):
        Detector.from_pretrained(folder)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the marker proves that the file runs code when unpickled
    assert marker.read_text() == "the payload ran"


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_weights_are_refused_naming_the_file(tmp_path, name):
    folder = _folder(tmp_path)
    if name == "pytorch_model.bin":
        torch.save(load_file(folder / "model.safetensors"), folder / name)
        (folder / "model.safetensors").unlink()
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(folder / name)) + ": not a readable"):
        Detector.from_pretrained(folder)


def test_another_model_type_and_missing_files_are_refused_naming_the_file(tmp_path):
    folder = _folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "yolos"}))
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json")) + ": model_type 'yolos' is not"):
        Detector.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "backbone_config": None, "use_timm_backbone": True,
                                                    "backbone": "efficientnet_b0"}))
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json")) + ": backbone 'efficientnet_b0'"):
        Detector.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json")) + ": not a readable JSON file"):
        Detector.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has config.json but no weights: expected model.safetensors or "
                                              "pytorch_model.bin"):
        Detector.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(WeightsError, match="is a folder without a config.json"):
        Detector.from_pretrained(folder)


# --- every command that takes --weights -----------------------------------------------------------------------

def test_eval_train_and_predict_take_a_folder(tmp_path):
    """--weights FOLDER in detr eval, detr train (fine-tuning start: with a zero learning rate the checkpoint keeps
    the folder's weights) and detr predict."""
    from ..helpers.train import config, data_flags, tiny_data

    data = tiny_data(tmp_path / "data", num_train=2, num_val=2)
    folder = tmp_path / "hf"  # TINY_MODEL's shapes, the demo data's 4 classes + "N/A"
    _hf_model("detr", encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
              encoder_attention_heads=2, decoder_attention_heads=2,
              id2label=dict(enumerate(["N/A", "circle", "square", "triangle", "cross"]))).save_pretrained(folder)
    assert cli.main(["eval", "--weights", str(folder), *data_flags(data), "--scales", "64", "--max_size", "96",
                     "--device", "cpu", "--num_workers", "0", "--output_dir", str(tmp_path / "eval"), "--quiet"]) == 0
    assert "AP" in json.loads((tmp_path / "eval" / "eval.json").read_text())

    from detr.checkpoint import load_checkpoint
    from detr.training.train import train

    train(config(data, tmp_path / "run", ["--weights", str(folder), "--epochs", "1", "--lr", "0",
                                          "--lr_backbone", "0"]), progress=False)
    start, _ = load_pretrained(folder)
    trained = load_checkpoint(tmp_path / "run" / "checkpoint.pth")["model"]
    assert all(torch.equal(trained[k], v) for k, v in start.state_dict().items())

    image = tmp_path / "a.png"
    Image.new("RGB", (70, 50), (90, 120, 30)).save(image)
    assert cli.main(["predict", str(image), "--weights", str(folder), "--threshold", "0", "--val_scale", "64",
                     "--max_size", "96", "--output_dir", str(tmp_path / "pred"), "--quiet"]) == 0
    assert any((tmp_path / "pred").iterdir())
