"""`evaluate_checkpoint`: COCO bbox AP of a saved model on a validation set."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .config import Config, ModelConfig, dataclass_from_dict
from .criterion import create_criterion
from .engine import evaluate
from .models.detr import build_model
from .prepare import resolve_data, resolve_device, validate_config
from .run_state import build_datasets, make_loader, write_eval_outputs


def model_config_from_checkpoint(ckpt: dict[str, Any], fallback: ModelConfig, path: str) -> ModelConfig:
    """The model a checkpoint was saved from: our config, else the official "args", else `fallback`;
    num_classes and num_queries always follow the weights' shapes."""
    state = ckpt["model"]
    if isinstance(ckpt.get("config"), dict) and "model" in ckpt["config"]:
        cfg = dataclass_from_dict(ModelConfig, ckpt["config"]["model"], where=f"{path}: config.model")
    else:
        official = ckpt.get("args") or {}
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        cfg = dataclasses.replace(fallback, **{k: v for k, v in official.items() if k in known})
        if "aux_loss" in official:
            cfg = dataclasses.replace(cfg, aux_loss=bool(official["aux_loss"]))
    if "class_embed.weight" not in state or "query_embed.weight" not in state:
        raise CheckpointError(f"{path}: not a DETR model (no class_embed / query_embed weights)")
    return dataclasses.replace(cfg, num_classes=state["class_embed.weight"].shape[0] - 1,
                               num_queries=state["query_embed.weight"].shape[0])


def evaluate_checkpoint(cfg: Config, path: str, progress: bool = True) -> dict[str, Any]:
    """Evaluate the model in `path` on cfg's validation data (or the data the checkpoint was trained on).

    Returns the evaluation stats (losses, "coco_eval_bbox" with the 12 COCOeval numbers, "AP", ...).
    """
    validate_config(cfg, training=False)
    ckpt = load_checkpoint(path)  # refuses anything that is not plain tensors and containers
    model_cfg = model_config_from_checkpoint(ckpt, cfg.model, path)
    data_cfg = cfg.data
    saved = (ckpt.get("config") or {}).get("data") if isinstance(ckpt.get("config"), dict) else None
    if not (data_cfg.coco_path or data_cfg.val_annotations) and saved:
        data_cfg = dataclass_from_dict(type(cfg.data), saved, where=f"{path}: config.data")
    cfg = dataclasses.replace(cfg, model=model_cfg, data=dataclasses.replace(data_cfg, class_names=None))
    device = resolve_device(cfg.train.device)
    started = distributed.init_from_env(device)
    try:
        cfg = resolve_data(cfg)
        if not cfg.data.val_annotations:
            raise ValueError("no validation data: give --val_images and --val_annotations (or --coco_path)")
        data = build_datasets(cfg, with_train=False)
        model = build_model(cfg.model).to(device)
        load_model_weights(model, ckpt["model"], source=path)
        criterion = create_criterion(cfg.model.num_classes, cfg.model.dec_layers, cfg.model.aux_loss,
                                     **vars(cfg.loss)).to(device)
        loader = make_loader(data.val, cfg.train.batch_size, False, cfg.train, distributed.rank(),
                             distributed.world_size())
        stats, detections = evaluate(model, criterion, loader, data.coco_gt, device, cfg.train.amp, progress)
        out_dir = Path(cfg.train.output_dir) if cfg.train.output_dir and distributed.is_main_process() else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        write_eval_outputs(out_dir, stats, detections)
        if distributed.is_main_process():
            print(f"{path} on {cfg.data.val_annotations} ({len(data.val)} images):")
            print(stats["coco_summary"])
            if out_dir:
                print(f"detections (COCO results format) in {out_dir / 'detections_val.json'}")
        return stats
    finally:
        if started:
            distributed.cleanup()
