"""Fault injection (issue 6): SIGKILL at random points, SIGTERM/SIGINT, a dying torchrun worker.

Every interrupted run must leave a checkpoint that loads, and resuming must reach the same
final weights as a run that was never interrupted (the reference, run the same way).
"""

from __future__ import annotations

import fcntl
import inspect
import os
import pty
import random
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch

import detr.training.train
from detr.checkpoint import SLEEP_IN_WRITE_ENV, load_checkpoint
from detr.training.train import train

from ..helpers.train import TINY_FLAGS, config, data_flags, env, max_weight_diff, run_cli, tiny_data

pytestmark = pytest.mark.slow
EPOCHS = 3
KILL_SEED_ENV = "DETR_TEST_KILL_SEED"  # the seed of the SIGKILL test's random kill times (default 0)


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


class Training:
    """`detr` in a subprocess whose stderr is a pseudo-terminal, copied to `log`.

    tqdm draws its progress bars only on a terminal, and the kill points "step" and "eval" are
    read from them; TQDM_MININTERVAL=0 draws every step.
    """

    def __init__(self, args: list[str], out: Path, sleep_in_write: float = 0.0) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / f"stderr-{time.monotonic_ns()}.txt"
        e = env()
        e.update({SLEEP_IN_WRITE_ENV: str(sleep_in_write), "TQDM_MININTERVAL": "0"})
        reader, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # 160 columns for the bars
        sink = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "detr", *args], stdout=subprocess.DEVNULL,
                                     stderr=terminal, env=e)
        os.close(terminal)
        self._copier = threading.Thread(target=self._copy, args=(reader, sink), daemon=True)
        self._copier.start()

    @staticmethod
    def _copy(reader: int, sink) -> None:
        with sink:
            while True:
                try:
                    chunk = os.read(reader, 65536)
                except OSError:  # EIO: every writer of the terminal has exited
                    break
                if not chunk:
                    break
                sink.write(chunk)
                sink.flush()
        os.close(reader)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once the process ended and all its output is in the log."""
        code = self.proc.wait(timeout=timeout)
        self._copier.join(timeout=30)
        return code


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


def kill_point(point: str, out: Path, run: Training, rng: random.Random):
    """A condition that becomes true at the chosen moment of the run."""
    if point == "write":
        return writing(out)
    if point == "step":
        return lambda: "1/2 [" in run.text()  # tqdm: the first training step of an epoch is done
    if point == "eval":
        return lambda: "eval:" in run.text()
    deadline = time.monotonic() + rng.uniform(2, 10)
    return lambda: time.monotonic() > deadline


def kill_seed() -> int:
    raw = os.environ.get(KILL_SEED_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{KILL_SEED_ENV}={raw!r}: expected an integer seed") from None


def test_sigkill_at_random_points_then_resume_reaches_the_same_weights(data, reference, tmp_path):
    seed = kill_seed()
    rng = random.Random(seed)  # fixed by default; another seed draws other kill times
    again = f"kill times drawn with {KILL_SEED_ENV}={seed}"
    out = tmp_path / "run"
    kills, last_killed = 0, False
    for point in ["write", "step", "eval", "write", "random", "step"] * 2:
        if kills >= 5 and last_killed:
            break
        run = Training(argv(data, out, resume=True), out, sleep_in_write=1.5)
        if wait_for(kill_point(point, out, run, rng), run.proc):
            time.sleep(rng.uniform(0, 0.3))
            run.proc.send_signal(signal.SIGKILL)
        last_killed = run.wait() == -signal.SIGKILL
        kills += last_killed
        if (out / "checkpoint.pth").exists():
            load_checkpoint(out / "checkpoint.pth")  # the latest checkpoint always loads
        if run.proc.returncode == 0:  # the run ended before this kill point (a slow machine): start again
            shutil.rmtree(out)
    assert kills >= 5 and last_killed, f"{kills} kills, the last run killed: {last_killed} ({again})"
    proc = run_cli(argv(data, out, resume=True), timeout=400)
    assert proc.returncode == 0, f"{again}\n{proc.stderr[-2000:]}"
    final = load_checkpoint(out / "checkpoint.pth")
    assert final["epoch"] == EPOCHS - 1 and final["step_in_epoch"] is None, again
    assert not list(out.glob(".*.tmp")), again  # temp files of killed writes are cleaned up
    assert max_weight_diff(final["model"], reference) <= 1e-6, again


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_sigint_stop_cleanly_with_a_checkpoint_and_resume_exactly(sig, data, reference, tmp_path):
    out = tmp_path / "run"
    # The signal comes while epoch 0's checkpoint is written (slowed to 1.5 s), so the stop is always
    # at the same point: after that epoch, whose checkpoint is the last one written.
    run = Training(argv(data, out, resume=False), out, sleep_in_write=1.5)
    assert wait_for(writing(out), run.proc), run.text()[-2000:]
    run.proc.send_signal(sig)
    assert run.wait(timeout=120) == 0, run.text()[-2000:]
    assert f"{sig.name}: stopping after this step and saving a checkpoint" in run.text()
    assert "(stopped by a signal after epoch 0)" in run.text()
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, None)
    done = run_cli(argv(data, out, resume=True), timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    assert max_weight_diff(load_checkpoint(out / "checkpoint.pth")["model"], reference) <= 1e-6


@pytest.fixture
def one_thread():
    """The reference run's thread count (helpers.train.env), so that sums are the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_signal_mid_epoch_saves_the_step_and_resume_is_exact(data, reference, tmp_path, monkeypatch, one_thread):
    """In process, so the signal comes at a known point: before epoch 1's first step."""
    real = detr.training.train.train_one_epoch

    def signal_in_epoch_1(*args, **kwargs):
        if inspect.signature(real).bind(*args, **kwargs).arguments["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train's StopOnSignal before the first step ends
        return real(*args, **kwargs)

    monkeypatch.setattr(detr.training.train, "train_one_epoch", signal_in_epoch_1)
    summary = train(config(data, tmp_path, ["--epochs", str(EPOCHS)]), progress=False)
    assert summary["stopped"] == "stopped by a signal at epoch 1 step 1"
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 1)
    monkeypatch.setattr(detr.training.train, "train_one_epoch", real)
    train(config(data, tmp_path, ["--epochs", str(EPOCHS), "--resume", str(tmp_path / "checkpoint.pth")]),
          progress=False)
    assert max_weight_diff(load_checkpoint(tmp_path / "checkpoint.pth")["model"], reference) <= 1e-6


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
