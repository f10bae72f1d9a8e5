"""Fault injection (issue 6): SIGKILL at random points, SIGTERM/SIGINT, a dying torchrun worker.

Every interrupted run must leave a checkpoint that loads, and resuming must reach the same
final weights as a run that was never interrupted (the reference, run the same way).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detr.checkpoint import SLEEP_IN_WRITE_ENV, load_checkpoint

from .train_helpers import TINY_FLAGS, data_flags, env, max_weight_diff, run_cli, tiny_data

pytestmark = pytest.mark.slow
EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("demo"), num_train=4, num_val=2)


def argv(data, out: Path, resume: bool) -> list[str]:
    ckpt = out / "checkpoint.pth"
    extra = ["--resume", str(ckpt)] if resume and ckpt.exists() else []
    return ["train", *TINY_FLAGS, *data_flags(data), "--epochs", str(EPOCHS), "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = run_cli(argv(data, out, False), timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_checkpoint(out / "checkpoint.pth")["model"]


def start(args: list[str], out: Path, sleep_in_write: float = 0.0) -> tuple[subprocess.Popen, Path]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"stderr-{time.monotonic_ns()}.txt"
    e = env()
    e[SLEEP_IN_WRITE_ENV] = str(sleep_in_write)
    proc = subprocess.Popen([sys.executable, "-m", "detr", *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=e)
    return proc, log


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until `condition()`; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise TimeoutError("training subprocess did not reach the expected point")


def writing(out: Path):
    return lambda: any(p.name.startswith(".checkpoint.pth.") for p in out.iterdir())


def kill_point(point: str, out: Path, log: Path, rng: random.Random):
    """A condition that becomes true at the chosen moment of the run."""
    if point == "write":
        return writing(out)
    if point == "step":
        return lambda: "1/2 [" in log.read_text()  # tqdm: the first training step of an epoch is done
    if point == "eval":
        return lambda: "eval:" in log.read_text()
    deadline = time.monotonic() + rng.uniform(2, 10)
    return lambda: time.monotonic() > deadline


def test_sigkill_at_random_points_then_resume_reaches_the_same_weights(data, reference, tmp_path):
    rng = random.Random()
    out = tmp_path / "run"
    kills, last_killed = 0, False
    for point in ["write", "step", "eval", "write", "random", "step"] * 2:
        if kills >= 5 and last_killed:
            break
        proc, log = start(argv(data, out, resume=True), out, sleep_in_write=1.5)
        if wait_for(kill_point(point, out, log, rng), proc):
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
        last_killed = proc.wait() == -signal.SIGKILL
        kills += last_killed
        if (out / "checkpoint.pth").exists():
            load_checkpoint(out / "checkpoint.pth")  # the latest checkpoint always loads
        if proc.returncode == 0:  # the run ended before this kill point (a slow machine): start again
            shutil.rmtree(out)
    assert kills >= 5 and last_killed
    proc = run_cli(argv(data, out, resume=True), timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = load_checkpoint(out / "checkpoint.pth")
    assert final["epoch"] == EPOCHS - 1 and final["step_in_epoch"] is None
    assert not list(out.glob(".*.tmp"))  # temp files of killed writes are cleaned up
    assert max_weight_diff(final["model"], reference) <= 1e-6


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_sigint_stop_cleanly_with_a_checkpoint_and_resume_exactly(sig, data, reference, tmp_path):
    out = tmp_path / "run"
    proc, log = start(["--verbose", *argv(data, out, resume=False)], out)
    assert wait_for(lambda: "epoch 0 step 1/2" in log.read_text(), proc)  # a DEBUG line per step
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    assert "stopping after this step" in log.read_text() or (out / "checkpoint.pth").exists()
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["epoch"] < EPOCHS - 1 or ckpt["step_in_epoch"] is not None  # it stopped early
    done = run_cli(argv(data, out, resume=True), timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert max_weight_diff(load_checkpoint(out / "checkpoint.pth")["model"], reference) <= 1e-6


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_torchrun_worker_death_stops_the_job_and_it_resumes(data, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "detr"]
    log = out / "torchrun.txt"
    proc = subprocess.Popen([*torchrun, *argv(data, out, False)[0:], "--eval_every", "100"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env())
    try:
        assert wait_for(lambda: (out / "checkpoint.pth").exists(), proc, timeout=400), log.read_text()[-3000:]
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        code = proc.wait(timeout=180)  # the whole job stops, it does not hang
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0
    assert "exitcode" in log.read_text() or "Signal 9" in log.read_text() or "SIGKILL" in log.read_text()
    load_checkpoint(out / "checkpoint.pth")
    resumed = subprocess.run([*torchrun, *argv(data, out, True), "--eval_every", "100"], capture_output=True,
                             text=True, env=env(), timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == EPOCHS - 1
