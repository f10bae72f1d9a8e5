"""benchmarks/convergence.py --smoke: recipes trained through `detr.training.train.train`, curves checked against
an independent evaluation of the saved checkpoint, the table and plot written, and runs cached by settings."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from detr.checkpoint import load_checkpoint
from detr.config import Config, config_from_flags
from detr.evaluation.evaluate import evaluate_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "convergence.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("convergence_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trained(bench, monkeypatch):
    """The Configs that the benchmark hands to the real `train`, in order."""
    calls: list[Config] = []
    real = bench.train

    def counting(cfg, progress=True):
        calls.append(cfg)
        return real(cfg, progress)

    monkeypatch.setattr(bench, "train", counting)
    return calls


def table_rows(path: Path) -> dict[str, list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    assert header[0] == "recipe" and "final AP" in header
    return {row[0]: dict(zip(header, row)) for row in rows}


def first_at_least(curve, metric, target, budget):
    for point in curve:
        if point[metric] >= target:
            return str(point["iteration"])
    return f"> {budget}"


def test_smoke_runs_caches_and_reruns_only_what_changed(bench, trained, tmp_path, monkeypatch):
    root = tmp_path / "bench"
    argv = ["--smoke", "--recipes", "vanilla", "groups", "--seeds", "1", "--root", str(root)]
    bench.main(argv)
    assert [c.model.num_groups for c in trained] == [1, 3]
    for cfg in trained:  # the benchmark's model through the real training code, an eval every 20 steps
        assert cfg.model.backbone == "tiny" and cfg.model.hidden_dim == 128 and cfg.model.num_queries == 16
        assert (cfg.train.steps_per_epoch, cfg.train.epochs, cfg.train.eval_every) == (20, 2, 1)
        assert cfg.train.lr_drop > cfg.train.epochs  # constant learning rate
    results = {r: json.loads((root / f"{r}-seed42.json").read_text()) for r in ("vanilla", "groups")}
    rows = table_rows(root / "convergence.md")
    assert "{" not in (root / "convergence.md").read_text().split("Machine: ")[1].split("\n")[0]  # filled in
    vanilla_final = results["vanilla"]["curve"][-1]["AP"]
    for recipe, result in results.items():
        run = root / "runs" / f"{recipe}-seed42"
        assert [p["iteration"] for p in result["curve"]] == [20, 40]
        ckpt = load_checkpoint(run / "checkpoint.pth")
        assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {40}  # 40 optimizer steps
        # the last point of the curve is the AP that a separate evaluation of the final weights gives
        cfg = config_from_flags({"device": "cpu", "num_workers": 0, "batch_size": 8})
        again = evaluate_checkpoint(cfg, str(run / "checkpoint.pth"), progress=False)
        assert result["curve"][-1]["AP"] == pytest.approx(again["AP"], abs=1e-9)
        assert result["curve"][-1]["AP50"] == pytest.approx(again["AP50"], abs=1e-9)
        assert 0 < result["seconds_per_iteration"] < result["wall_seconds"] / 40  # evaluation left out
        assert result["cpu_seconds"] > 0
        row = rows[recipe]
        assert row["final AP"] == f"{result['curve'][-1]['AP']:.3f}"
        assert row["iterations to AP50 >= 0.5"] == first_at_least(result["curve"], "AP50", 0.5, 40)
        assert row["iterations to vanilla's final AP"] == first_at_least(result["curve"], "AP", vanilla_final, 40)
    with Image.open(root / "convergence.png") as png:
        assert png.format == "PNG" and png.size == (1100, 450)

    # the same settings again: nothing is trained, the JSON files are kept as they were
    before = {p.name: p.read_bytes() for p in root.glob("*.json")}
    trained.clear()
    bench.main(argv)
    assert trained == []
    assert {p.name: p.read_bytes() for p in root.glob("*.json")} == before

    # one recipe's options change: only that recipe trains again
    monkeypatch.setitem(bench.RECIPES, "groups", {"num_groups": 2})
    bench.main(argv)
    assert [c.model.num_groups for c in trained] == [2]
    assert (root / "vanilla-seed42.json").read_bytes() == before["vanilla-seed42.json"]
    assert json.loads((root / "groups-seed42.json").read_text())["options"]["num_groups"] == 2

    # a second seed: for vanilla and the best other recipe only
    trained.clear()
    bench.main([*argv[:-3], "2", "--root", str(root)])
    assert [(c.model.num_groups, c.train.seed) for c in trained] == [(1, 43), (2, 43)]
    assert table_rows(root / "convergence.md")["vanilla"]["seeds"] == "42, 43"


def test_crossings_are_interpolated_between_evaluations(bench):
    curve = [{"iteration": 500, "AP": 0.1}, {"iteration": 1000, "AP": 0.3}, {"iteration": 1500, "AP": 0.7}]
    assert bench.crossing(curve, "AP", 0.5) == pytest.approx(1000 + 500 * (0.5 - 0.3) / (0.7 - 0.3))
    assert bench.crossing(curve, "AP", 0.05) == 500  # already there at the first evaluation
    assert bench.crossing(curve, "AP", 0.3) == 1000 and bench.crossing(curve, "AP", 0.8) is None


@pytest.mark.parametrize("argv, message", [
    (["--recipes", "nope"], "--recipes: unknown recipe(s) ['nope']; known: vanilla, groups"),
    (["--iterations", "30", "--eval_every", "20"], "--iterations (30) must be a positive multiple of --eval_every (20)"),
    (["--seeds", "0"], "--seeds must be >= 1"),
])
def test_bad_arguments_are_refused(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_runs_on_the_threads_asked_for_and_restores_them(bench, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # what the caller had
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    bench.main(["--smoke", "--recipes", "vanilla", "--seeds", "1", "--iterations", "20", "--root", str(tmp_path)])
    assert set_to == [1, 3] and len(trained) == 1
    result = json.loads((tmp_path / "vanilla-seed42.json").read_text())
    assert result["torch_threads"] == 1 and [p["iteration"] for p in result["curve"]] == [20]


def test_a_run_cut_short_goes_on_from_its_checkpoint(bench, trained, tmp_path, monkeypatch):
    """A session that ends mid-run leaves a checkpoint; the next call resumes it (same settings only) and the
    curve equals that of a run never cut."""
    argv = ["--smoke", "--recipes", "vanilla", "--seeds", "1", "--root"]
    bench.main([*argv, str(tmp_path / "whole")])
    whole = json.loads((tmp_path / "whole" / "vanilla-seed42.json").read_text())

    real = bench.train

    def cut_after_first_epoch(cfg, progress=True):
        real(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)), progress)
        raise KeyboardInterrupt  # the session ends

    monkeypatch.setattr(bench, "train", cut_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        bench.main([*argv, str(tmp_path / "cut")])
    assert not (tmp_path / "cut" / "vanilla-seed42.json").exists()
    monkeypatch.setattr(bench, "train", real)
    trained.clear()
    monkeypatch.setattr(bench, "train", lambda cfg, progress=True: (trained.append(cfg), real(cfg, progress))[1])
    bench.main([*argv, str(tmp_path / "cut")])
    assert trained[0].train.resume.endswith("checkpoint.pth")
    resumed = json.loads((tmp_path / "cut" / "vanilla-seed42.json").read_text())
    assert resumed["resumed"] and resumed["timed_steps"] == 20
    assert [p["iteration"] for p in resumed["curve"]] == [p["iteration"] for p in whole["curve"]] == [20, 40]
    for a, b in zip(resumed["curve"], whole["curve"]):
        assert a["AP"] == pytest.approx(b["AP"], abs=1e-9) and a["AP50"] == pytest.approx(b["AP50"], abs=1e-9)

    # other settings: the cut run's folder is not resumed but started afresh
    monkeypatch.setitem(bench.RECIPES, "vanilla", {"num_groups": 2})
    trained.clear()
    bench.main([*argv, str(tmp_path / "cut")])
    assert trained[0].train.resume == ""
