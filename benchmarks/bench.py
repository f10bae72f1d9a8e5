"""Side-by-side benchmark: this package's DETR against the official code (detr==0.1.4), same weights and inputs.

    python benchmarks/bench.py                 # every case at 800x1199, prints a markdown table
    python benchmarks/bench.py --quick         # smaller image, fewer runs (a smoke test of the script)
    python benchmarks/bench.py --device cuda   # the same on a GPU (bf16 autocast, fused attention kernels)

Each (case, implementation) runs in a fresh process so its peak resident memory (ru_maxrss;
on CUDA, the peak allocated GPU memory) is its own. The official and our process of a case
run back to back, alternating for `--rounds`, so both see the same machine load. Times are
medians over `--runs` runs after warm-up (two calls for inference, one step for training).

Cases: inference (eval mode, `torch.inference_mode`), bf16 inference (autocast; ours only,
compared with the official fp32 time, plus how far its predictions move from our fp32 ones),
and a training step (forward, official-weighted loss, backward, clip 0.1, AdamW) with the
default attention dropout 0.1, or 0 (`attention_dropout=0.0`, our fused-kernel option), in
fp32 or (ours, opt-in) under bf16 autocast.

After the timings, a second table puts each target in terms of the machine: the official
model's matmul and convolution FLOPs (counted by `torch.utils.flop_counter`) over the time
the target allows, against this machine's fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# name: (model, mode, our create_model overrides, our run options). The official model of a
# case is (model, mode) with the paper's settings, measured once for the cases that share it.
CASES = {
    "r50_infer": ("detr_r50", "infer", {}, {}),
    "r50_infer_bf16": ("detr_r50", "infer", {}, {"bf16": True}),
    "dc5_infer": ("detr_r50_dc5", "infer", {}, {}),
    "dc5_infer_bf16": ("detr_r50_dc5", "infer", {}, {"bf16": True}),
    "r50_train": ("detr_r50", "train", {}, {}),
    "r50_train_cl": ("detr_r50", "train", {}, {"channels_last": True}),
    "dc5_train": ("detr_r50_dc5", "train", {}, {}),
    "dc5_train_attn_drop0": ("detr_r50_dc5", "train", {"attention_dropout": 0.0}, {}),
    "dc5_train_attn_drop0_cl": ("detr_r50_dc5", "train", {"attention_dropout": 0.0}, {"channels_last": True}),
    "r50_train_bf16": ("detr_r50", "train", {}, {"bf16": True}),
    "dc5_train_attn_drop0_bf16": ("detr_r50_dc5", "train", {"attention_dropout": 0.0}, {"bf16": True}),
}
# The speed-up targets, ours / official (fp32 cases; bf16 is compared with official fp32).
TARGETS = {"r50_infer": 1.5, "r50_infer_bf16": 3.0, "dc5_infer": 2.5, "r50_train": 1.3, "dc5_train": 1.5,
           "dc5_train_attn_drop0": 4.0}
TITLES = {
    "r50_infer": "R50 inference fp32",
    "r50_infer_bf16": "R50 inference, ours bf16 autocast (opt-in) vs official fp32",
    "dc5_infer": "R50-DC5 inference fp32",
    "dc5_infer_bf16": "R50-DC5 inference, ours bf16 autocast (opt-in) vs official fp32",
    "r50_train": "R50 train step (default: exact, attention dropout 0.1)",
    "r50_train_cl": "R50 train step, ours `channels_last_training` (opt-in)",
    "dc5_train": "R50-DC5 train step (default: exact, attention dropout 0.1)",
    "dc5_train_attn_drop0": "R50-DC5 train step, ours `attention_dropout=0.0` (opt-in)",
    "dc5_train_attn_drop0_cl": "R50-DC5 train step, ours `attention_dropout=0.0` + `channels_last_training`",
    "r50_train_bf16": "R50 train step, ours bf16 autocast (`--amp bf16`, opt-in) vs official fp32",
    "dc5_train_attn_drop0_bf16": "R50-DC5 train step, ours `attention_dropout=0.0` + bf16 autocast vs official fp32",
}


def official_model(model_name: str):
    sys.path.insert(0, str(ROOT))
    from tests import official  # the reference is importable only from the repo

    torch.manual_seed(0)
    return official.build_model(official.load(), dilation=model_name.endswith("dc5"))


def save_official_weights(model_name: str, folder: Path) -> Path:
    """Seeded random weights of the official model, shared by both implementations' processes."""
    path = folder / f"{model_name}.pth"
    if not path.exists():
        torch.save(official_model(model_name).state_dict(), path)
    return path


def build(model_name: str, overrides: dict, impl: str, weights: Path, device: str) -> torch.nn.Module:
    """The official model or ours, with the weights saved in `weights` (ours never builds the official one)."""
    import detr

    model = official_model(model_name) if impl == "official" else detr.create_model(model_name, **overrides)
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(state if impl == "official" else detr.convert_official_state_dict(state))
    del state
    return model.to(device)


def make_inputs(size: tuple[int, int], device: str):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(3, *size, generator=g).to(device)
    targets = [{"labels": torch.tensor([1, 17, 62], device=device),
                "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.6], [0.2, 0.3, 0.1, 0.2], [0.7, 0.6, 0.3, 0.3]],
                                      device=device)}]
    return [image], targets


def make_step(model, impl: str, device: str, bf16: bool = False):
    """A closure doing one training step: forward, weighted loss (under bf16 autocast if asked), backward,
    clip, AdamW."""
    if impl == "official":
        from tests import official

        criterion = official.build_criterion(official.load())
        weights = criterion.weight_dict

        def total(out, targets):
            losses = criterion(out, targets)
            return sum(losses[k] * weights[k] for k in losses if k in weights)
    else:
        import detr
        from detr.loss_stats import float_outputs

        criterion = detr.create_criterion(num_classes=91)

        def total(out, targets):
            return criterion.total_loss(criterion(out, targets))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def step(images, targets):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = model(images)
        loss = total(out if not bf16 else float_outputs(out), targets)  # as detr.engine: the loss in fp32
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)  # gradients freed before the next forward, for both
    return step


def timed(fn, runs: int, device: str, warmup: int) -> list[float]:
    times = []
    for _ in range(runs + warmup):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def bf16_shift(model, images) -> dict:
    """How bf16 autocast moves our predictions: label changes and box L1 vs our fp32 outputs."""
    device = images[0].device.type
    with torch.inference_mode():
        ref = model(images)
        with torch.autocast(device, dtype=torch.bfloat16):
            low = model(images)
    prob_ref = ref["pred_logits"].float().softmax(-1)[0]  # [Q, C+1]
    prob_low = low["pred_logits"].float().softmax(-1)[0]
    top = prob_ref[:, :-1].max(-1).values.topk(10).indices  # the 10 most confident queries
    changed = prob_ref.argmax(-1) != prob_low.argmax(-1)
    box_l1 = (ref["pred_boxes"].float() - low["pred_boxes"].float()).abs()[0].sum(-1)  # [Q], normalised cxcywh
    return {"label_changed_all": changed.float().mean().item(), "label_changed_top10": changed[top].float().mean().item(),
            "box_l1_mean": box_l1.mean().item(), "box_l1_top10": box_l1[top].mean().item()}


def worker(case: str, impl: str, size: tuple[int, int], runs: int, device: str, weights: Path) -> dict:
    """Run one (case, implementation) in this process and return its measurements."""
    model_name, mode, overrides, options = CASES[case] if impl == "ours" else (*CASES[case][:2], {}, {})
    model = build(model_name, overrides, impl, weights, device)
    if options.get("channels_last"):
        model.backbone[0].channels_last_training = True
    images, targets = make_inputs(size, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result: dict = {}
    low = bool(options.get("bf16"))
    if mode == "train":
        step = make_step(model.train(), impl, device, bf16=low)

        def call():
            step(images, targets)
        times = timed(call, runs, device, warmup=1)
    else:
        model.eval()

        def call():
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=low):
                model(images)
        times = timed(call, runs, device, warmup=2)  # oneDNN settles in the second call
        if low:
            result.update(bf16_shift(model, images))
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if impl == "official":  # the work the function takes, counted after the timed runs
        with torch.set_grad_enabled(mode == "train"):  # (the counter fails under inference_mode)
            result["flops"] = count_flops(call if mode == "train" else lambda: model(images))
    return {**result, "times": times, "median": statistics.median(times), "peak_bytes": peak}


def count_flops(fn) -> int:
    """Floating-point operations of matmuls and convolutions (forward and backward) in one call of `fn`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: str, n: int = 4096, runs: int = 5) -> float:
    """This machine's fp32 matmul rate (FLOP/s) on n x n matrices: what the fastest kernels reach."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / statistics.median(timed(lambda: a @ b, runs, device, warmup=2))


def run_worker(case: str, impl: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, impl, "--size", *map(str, args.size), "--runs", str(args.runs),
           "--device", args.device, "--weights", str(save_official_weights(CASES[case][0], args.weights))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{case}/{impl} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torchvision

    parts = [f"CPU {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"]
    if device == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts.append(f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
                 f"official detr 0.1.4")
    return "; ".join(parts)


def fmt_mem(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(results: dict, args: argparse.Namespace) -> str:
    mem = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    lines = [f"| case | official | ours | speed-up (official / ours) | {mem} official | {mem} ours |",
             "|---|---|---|---|---|---|"]
    for case, (theirs, ours) in results.items():
        lines.append(f"| {TITLES[case]} | {theirs['median']:.2f} s | {ours['median']:.2f} s | "
                     f"**{theirs['median'] / ours['median']:.2f}x** | {fmt_mem(theirs['peak_bytes'])} | "
                     f"{fmt_mem(ours['peak_bytes'])} |")
    for _, ours in results.values():
        if "box_l1_mean" in ours:
            lines.append("")
            lines.append(f"bf16 vs fp32 (ours, same weights and image): label changed on "
                         f"{ours['label_changed_all']:.1%} of all 100 queries and {ours['label_changed_top10']:.1%} "
                         f"of the 10 most confident; mean box L1 shift (cx, cy, w, h summed, normalised) "
                         f"{ours['box_l1_mean']:.4f} over all, {ours['box_l1_top10']:.4f} over the top 10.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="480x720 images, 1 run per case (smoke test)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=None, help="timed runs per process after the warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="official/ours process pairs per case, alternating")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or ([480, 720] if args.quick else [800, 1199])
    args.runs = args.runs or (1 if args.quick else 3)
    if args.worker:
        print(json.dumps(worker(*args.worker, tuple(args.size), args.runs, args.device, args.weights)))
        return
    with tempfile.TemporaryDirectory() as folder:
        args.weights = Path(folder)
        run_all(args)


def run_all(args: argparse.Namespace) -> None:
    groups: dict[tuple[str, str], list[str]] = {}
    for case in args.cases:  # the cases that share one official measurement
        groups.setdefault(CASES[case][:2], []).append(case)
    results = {}
    for cases in groups.values():
        runs: dict[str, list[dict]] = {name: [] for name in ("official", *cases)}
        for r in range(args.rounds):  # official first, then ours; reversed every other round
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                runs[name].append(run_worker(cases[0] if name == "official" else name,
                                             "official" if name == "official" else "ours", args))
                print(f"{name}: {runs[name][-1]['median']:.2f} s", file=sys.stderr, flush=True)
        for case in cases:
            results[case] = (_merge(runs["official"]), _merge(runs[case]))
    print(f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`  \n"
          f"Image {args.size[0]}x{args.size[1]}, batch 1, {args.device}, {args.runs} timed run(s) after warm-up "
          f"per process, {args.rounds} round(s)  \n{machine(args.device)}\n")
    print(table(results, args))
    print()
    print(floor_table(results, matmul_peak(args.device)))


def floor_table(results: dict, peak: float) -> str:
    """What each target asks of the machine: the official model's FLOPs over the time the target allows."""
    lines = [f"fp32 matmul peak of this machine (4096^3 `a @ b`): {peak / 1e9:.0f} GFLOP/s. FLOPs: matmuls and "
             "convolutions of the official model (forward; forward + backward for a train step).", "",
             "| case | GFLOP | official GFLOP/s | ours GFLOP/s | target | time allowed | GFLOP/s needed | of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for case, (theirs, ours) in results.items():
        flops, target = theirs["flops"], TARGETS.get(case)
        row = (f"| {TITLES[case]} | {flops / 1e9:.0f} | {flops / theirs['median'] / 1e9:.0f} | "
               f"{flops / ours['median'] / 1e9:.0f} |")
        if target is None:
            lines.append(row + " - | - | - | - |")
            continue
        allowed = theirs["median"] / target
        lines.append(row + f" {target}x | {allowed:.2f} s | {flops / allowed / 1e9:.0f} | "
                           f"{flops / allowed / peak:.0%} |")
    return "\n".join(lines)


def _merge(rounds: list[dict]) -> dict:
    """Pool the rounds of one implementation: median of all times, the largest peak."""
    times = [t for r in rounds for t in r["times"]]
    merged = {**rounds[0], "times": times, "median": statistics.median(times),
              "peak_bytes": max(r["peak_bytes"] for r in rounds)}
    return merged


if __name__ == "__main__":
    main()
