"""A 2-process gloo run under torchrun: both ranks end with identical weights, rank 0 checkpoints.

Slow (two torch processes plus the torchrun agent): about 10-20 s on a loaded 2-core machine.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facerec.train.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "train_worker.py"


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    overrides = {"schedule": {"total_steps": 6, "milestones": [4]}, "checkpoint": {"every": 3, "keep": 1}}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(tmp_path), json.dumps(overrides)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 rank(s), global batch 8" in proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    params = [k for k in ranks[0]["backbone"] if "running" not in k and "num_batches" not in k]
    assert len(params) > 5
    for key in params:
        assert torch.equal(ranks[0]["backbone"][key], ranks[1]["backbone"][key]), key
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000006.pt"]
    state = load_checkpoint(tmp_path / "ckpt_00000006.pt")
    assert len(state["rng"]) == 2  # every rank's RNG state
    for key in params:
        assert torch.equal(state["model"][key], ranks[0]["backbone"][key]), key
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("tiny_acc" in m for m in metrics)  # verification ran on rank 0 while rank 1 waited
