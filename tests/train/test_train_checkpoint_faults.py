"""Faults while a checkpoint is written: a process killed mid-write and a disk that fills up. The last
good checkpoint must stay usable, the failure must be reported clearly, and resume must pick that checkpoint."""
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facerec.train import checkpoint as ckpt_mod
from facerec.train.checkpoint import (CheckpointWriteError, find_resume_checkpoint, list_checkpoints,
                                      save_checkpoint)

ROOT = Path(__file__).resolve().parents[2]


def _state(step):
    g = torch.Generator().manual_seed(step)
    return {"format_version": ckpt_mod.FORMAT_VERSION, "step": step, "config": {"name": "t"},
            "model": {"w": torch.randn(64, 64, generator=g)}}


_KILL_SCRIPT = r"""
import os, signal, sys
import torch
from facerec.train import checkpoint as c
out = sys.argv[1]
c.save_checkpoint({"format_version": c.FORMAT_VERSION, "step": 1, "config": {"name": "t"},
                   "model": {"w": torch.ones(64, 64)}}, out, 1, keep=3)
real_save = torch.save
def save_then_die(obj, f):
    f.write(b"PK\x03\x04 half of a zip")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
c.torch.save = save_then_die
c.save_checkpoint({"format_version": c.FORMAT_VERSION, "step": 2, "config": {"name": "t"},
                   "model": {"w": torch.zeros(64, 64)}}, out, 2, keep=3)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_while_writing_leaves_last_checkpoint_and_resumes_from_it(tmp_path, caplog):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    unfinished = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt_00000002.pt.tmp-")]
    assert len(unfinished) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000001.pt"]
    with caplog.at_level(logging.INFO, logger="facerec.train.checkpoint"):
        path, state = find_resume_checkpoint(tmp_path)
    assert path.name == "ckpt_00000001.pt" and state["step"] == 1
    assert torch.equal(state["model"]["w"], torch.ones(64, 64))
    assert "unfinished checkpoint write" in caplog.text and unfinished[0] in caplog.text
    assert "resuming from" in caplog.text and "ckpt_00000001.pt" in caplog.text
    # the resumed run's next save succeeds and clears the leftover of the killed one
    save_checkpoint(_state(3), tmp_path, 3, keep=3)
    assert not (tmp_path / unfinished[0]).exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000001.pt", "ckpt_00000003.pt"]


def test_disk_full_during_checkpoint_keeps_last_good_and_says_so(tmp_path, monkeypatch, caplog, full_disk):
    first = save_checkpoint(_state(1), tmp_path, 1, keep=1)
    good_bytes = first.read_bytes()
    monkeypatch.setattr(ckpt_mod, "open", full_disk(5000), raising=False)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(_state(2), tmp_path, 2, keep=1)  # keep=1 would prune step 1 after a success
    msg = str(info.value)
    assert "could not write checkpoint" in msg and "ckpt_00000002.pt" in msg
    assert f"The last good checkpoint is {first}" in msg and "rerun with resume" in msg
    assert info.value.last_good == first and isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, (OSError, RuntimeError))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000001.pt"]  # no partial file, nothing pruned
    assert first.read_bytes() == good_bytes
    monkeypatch.undo()
    path, state = find_resume_checkpoint(tmp_path)
    assert path == first and state["step"] == 1 and torch.equal(state["model"]["w"], _state(1)["model"]["w"])
    # space freed: the same save now goes through and prunes as asked
    save_checkpoint(_state(2), tmp_path, 2, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000002.pt"]


def test_disk_full_on_first_checkpoint_says_there_is_none(tmp_path, monkeypatch, full_disk):
    monkeypatch.setattr(ckpt_mod, "open", full_disk(100), raising=False)
    with pytest.raises(CheckpointWriteError, match="There is no earlier checkpoint") as info:
        save_checkpoint(_state(1), tmp_path, 1, keep=2)
    assert info.value.last_good is None and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert find_resume_checkpoint(tmp_path) is None
