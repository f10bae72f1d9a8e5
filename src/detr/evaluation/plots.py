"""Pictures of an evaluation and of a dataset: precision-recall curves, the confusion matrix, per-class AP of
several runs, and the data picture drawn at the start of training.

matplotlib is imported inside the functions, and figures are made with `matplotlib.figure.Figure` and rendered
by the Agg canvas (no pyplot), so nothing touches matplotlib's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_CURVES = 20  # more classes than this: the mean curve and the best and worst classes only
MAX_ANNOTATED = 30  # counts are written in the cells of confusion matrices up to this many classes


def _figure(width: float, height: float, dpi: int = 100) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def _save(fig: Any, output: Path) -> Path:
    fig.tight_layout()
    fig.savefig(output, format="png")
    return output


def plot_pr_curves(recall: np.ndarray, precision: np.ndarray, names: Sequence[str],
                   records: Sequence[dict[str, Any]], output: Path) -> Path:
    """Precision over recall at IoU 0.5, one line per class (recall [R], precision [K, R]; -1: no ground
    truth, not drawn) and the mean over classes; with many classes only the best and worst few are named."""
    fig = _figure(9, 6)
    ax = fig.subplots()
    valid = [k for k in range(len(names)) if (precision[k] > -1).any()]
    order = sorted(valid, key=lambda k: -(records[k]["AP50"] or 0.0))
    shown = order if len(order) <= MAX_CURVES else order[:MAX_CURVES // 2] + order[-MAX_CURVES // 2:]
    for k in shown:
        ax.plot(recall, precision[k], linewidth=1, label=f"{names[k]} {records[k]['AP50']:.3f}")
    if valid:
        mean = precision[valid].mean(0)  # [R]
        ax.plot(recall, mean, color="black", linewidth=3, label=f"all classes {mean.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="precision-recall at IoU 0.5 (legend: AP50)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, output)


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], score_threshold: float, output: Path) -> Path:
    """The confusion matrix [K + 1, K + 1] (rows: ground truth, columns: prediction, last: background),
    coloured by each row's share, with the counts written in the cells for up to MAX_ANNOTATED classes."""
    labels = [*names, "background"]
    n = len(labels)
    side = min(max(5.0, 0.35 * n + 2), 30.0)
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    rows = matrix.sum(1, keepdims=True)  # [K + 1, 1]
    share = matrix / np.where(rows > 0, rows, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    if n <= MAX_ANNOTATED + 1:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ticks = range(n) if n <= 100 else []
    ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
    ax.set(xlabel="predicted", ylabel="ground truth",
           title=f"confusion matrix, IoU 0.5, score >= {score_threshold:g}")
    return _save(fig, output)


def plot_per_class_runs(runs: dict[str, list[dict[str, Any]]], output: Path,
                        history: dict[str, list[tuple[float, list[dict[str, Any]]]]] | None = None) -> Path:
    """Per-class AP and AP50 of several runs side by side: one horizontal bar per run for each class
    (`runs`: a label -> `per_class_ap` records; classes without ground truth are left out), and with
    `history` (a label -> (epoch, records) of each evaluation) per-class AP over epochs, a line style per run."""
    names: dict[int, str] = {}
    for records in runs.values():
        names.update({r["id"]: r["name"] for r in records if r.get("AP") is not None})
    ids = sorted(names)
    height = min(max(4.0, 0.25 * len(ids) * max(len(runs), 1) + 1.5), 60.0)
    panels = 3 if history else 2
    fig = _figure(6 * panels, height)
    axes = fig.subplots(1, panels)
    bar = 0.8 / max(len(runs), 1)
    for ax, metric in zip(axes, ("AP", "AP50")):
        for n, (label, records) in enumerate(runs.items()):
            values = {r["id"]: r.get(metric) for r in records}
            ax.barh([i + n * bar for i in range(len(ids))], [values.get(c) or 0.0 for c in ids], height=bar,
                    label=label)
        ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(ids))], [names[c] for c in ids], fontsize=7)
        ax.set_ylim(len(ids) - 0.2, -0.4)  # the first class on top
        ax.set(xlim=(0, 1), xlabel=metric, title=f"per-class {metric} (last evaluation)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    if history:
        _per_class_history(axes[2], history, ids[:MAX_CURVES], names)
    return _save(fig, output)


def _per_class_history(ax: Any, history: dict[str, list[tuple[float, list[dict[str, Any]]]]],
                       ids: Sequence[int], names: dict[int, str]) -> None:
    """Per-class AP over epochs: a colour per class, a line style per run."""
    styles = ["-", "--", ":", "-."]
    colours = [f"C{i % 10}" for i in range(len(ids))]
    for n, (label, evaluations) in enumerate(history.items()):
        for c, colour in zip(ids, colours):
            points = [(e, r["AP"]) for e, records in evaluations for r in records if r["id"] == c
                      and r.get("AP") is not None]
            if points:
                ax.plot(*zip(*points), styles[n % len(styles)], color=colour, marker="o" if len(points) < 20 else None,
                        label=f"{label}: {names[c]}")
    ax.set(xlabel="epoch", ylabel="AP", ylim=(0, 1), title="per-class AP over epochs")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=6)


def plot_data(stats: dict[str, Any], images: Sequence[np.ndarray], output: Path) -> Path:
    """The data picture: boxes per class, box width and height, boxes per image, and a few training images
    with their boxes after augmentation.

    Args:
        stats: "names" [K], "per_class" [K] box counts, "wh" [N, 2] box sizes in pixels,
            "per_image" [I] box counts, "title".
        images: HxWx3 uint8 images with their boxes already drawn.
        output: the PNG to write.
    """
    fig = _figure(14, 9)
    grid = fig.add_gridspec(2, max(3, len(images)))
    ax = fig.add_subplot(grid[0, 0])
    ax.barh(range(len(stats["names"])), stats["per_class"])
    ax.set_yticks(range(len(stats["names"])), stats["names"], fontsize=6 if len(stats["names"]) > 20 else 8)
    ax.invert_yaxis()
    ax.set(xlabel="boxes", title="boxes per class")
    ax = fig.add_subplot(grid[0, 1])
    wh = np.asarray(stats["wh"], dtype=float).reshape(-1, 2)
    ax.scatter(wh[:, 0], wh[:, 1], s=3, alpha=0.4)
    ax.set(xlabel="width (px)", ylabel="height (px)", title="box sizes (original images)")
    if len(wh) and (wh > 0).all() and wh.max() / max(wh.min(), 1e-9) > 50:  # spans decades: log axes
        ax.set(xscale="log", yscale="log")
    ax = fig.add_subplot(grid[0, 2])
    per_image = np.asarray(stats["per_image"], dtype=int)
    ax.hist(per_image, bins=np.arange(per_image.max(initial=0) + 2) - 0.5)
    ax.set(xlabel="boxes in the image", ylabel="images", title="boxes per image")
    for i, image in enumerate(images):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(image)
        ax.set_axis_off()
        ax.set_title("after augmentation", fontsize=8)
    fig.suptitle(stats.get("title", ""))
    return _save(fig, output)

