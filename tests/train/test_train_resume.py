"""Step-exact resume across processes: SIGKILL mid-run then --resume auto, and SIGTERM's checkpoint.

Each phase is a separate ``python tests/train/train_worker.py`` process on the tiny stand-ins
(1 thread each, so the three runs do identical arithmetic). Slow: about 15-30 s on a loaded machine.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facerec.train.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "train_worker.py"
pytestmark = pytest.mark.slow

RUN = {"schedule": {"total_steps": 30, "milestones": [20]}, "checkpoint": {"every": 4, "keep": 2},
       "eval": {"every": 10}}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(out_dir, overrides, *extra):
    return subprocess.run([sys.executable, str(WORKER), str(out_dir), json.dumps(overrides), *extra],
                          env=_env(), capture_output=True, text=True, timeout=300)


def _start_and_signal(out_dir, overrides, sig, wait_for_step):
    proc = subprocess.Popen([sys.executable, str(WORKER), str(out_dir), json.dumps(overrides), "--slow", "0.01"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = Path(out_dir) / f"ckpt_{wait_for_step:08d}.pt"
    deadline = time.monotonic() + 240
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _with(base, **sections):
    out = json.loads(json.dumps(base))
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def _assert_same(a, b):
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    for ga, gb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ga["momentum_buffer"], gb["momentum_buffer"])


def test_sigkill_then_resume_auto_is_step_exact(tmp_path):
    run = _with(RUN, data={"num_workers": 1})
    ref = _run(tmp_path / "ref", run)
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = load_checkpoint(tmp_path / "ref" / "ckpt_00000030.pt")

    killed = tmp_path / "killed"
    code, _ = _start_and_signal(killed, run, signal.SIGKILL, wait_for_step=8)
    assert code == -signal.SIGKILL
    steps = [load_checkpoint(p)["step"] for p in list_checkpoints(killed)]
    assert 8 <= max(steps) < 30, steps  # killed mid-run
    (killed / "ckpt_00000099.pt").write_bytes(b"PK\x03\x04 truncated")  # a torn newest file is skipped
    resumed = _run(killed, _with(run, train={"resume": "auto"}))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping checkpoint" in resumed.stderr and "ckpt_00000099.pt" in resumed.stderr
    assert f"resumed from {killed / f'ckpt_{max(steps):08d}.pt'}" in resumed.stderr
    _assert_same(reference, load_checkpoint(killed / "ckpt_00000030.pt"))


def test_sigterm_writes_a_checkpoint_and_resume_finishes_identically(tmp_path):
    ref = _run(tmp_path / "ref", RUN)
    assert ref.returncode == 0, ref.stderr[-2000:]
    stopped = tmp_path / "stopped"
    code, err = _start_and_signal(stopped, RUN, signal.SIGTERM, wait_for_step=4)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "received SIGTERM" in err
    at = torch.load(stopped / "rank0.pt", weights_only=True)["step"]
    assert 4 <= at < 30
    assert load_checkpoint(stopped / f"ckpt_{at:08d}.pt")["step"] == at
    resumed = _run(stopped, _with(RUN, train={"resume": "auto"}))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same(load_checkpoint(tmp_path / "ref" / "ckpt_00000030.pt"),
                 load_checkpoint(stopped / "ckpt_00000030.pt"))
