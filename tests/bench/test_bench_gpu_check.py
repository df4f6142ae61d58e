"""Tests of benchmarks/gpu_check.py, the prepared GPU check: its CPU run (environment and the correctness of every
DRConv path, the "triton" one under Triton's interpreter, against float64; the CUDA sections say they are skipped)
exits 0 and writes its markdown file; the time limit skips sections; bad arguments are refused. The runs are
subprocesses: the script sets TRITON_INTERPRET=1 before triton's first import, which must not leak into this
process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CUDA = torch.cuda.is_available()
REPORT = "gpu_check.md" if CUDA else "gpu_check_cpu.md"


def _run(*args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_quick_run_checks_every_path_and_writes_its_table(tmp_path):
    # On a GPU only the sections that fit a test: the rest is the check itself.
    sections = ["--sections", "env,correctness"] if CUDA else []
    done = _run("--quick", "--out", str(tmp_path), *sections)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    text = (tmp_path / REPORT).read_text()
    assert f"Written to {tmp_path / REPORT}." in text and text.splitlines()[-1] in done.stdout
    assert "## 1. Correctness of every path" in text
    assert "| generator | path | layer | fp32 out |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| paper |", "| basis |"))]
    paths = {line.split("|")[2].strip().split(" ")[0] for line in rows}
    assert {"auto", "triton", "structured", "gather", "all_regions", "dense_mix", "dense_pointwise"} <= paths
    assert all(line.rstrip(" |").endswith("yes") or "skipped:" in line for line in rows), rows
    assert "**NO**" not in text and "**error**" not in text
    if not CUDA:
        assert text.count("Needs CUDA: skipped on this machine.") == 6
        assert "| 1. correctness | passed |" in text


def test_time_limit_skips_sections_and_still_writes(tmp_path):
    done = _run("--sections", "env,correctness", "--time-limit", "0", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / REPORT).read_text()
    assert text.count("Skipped: the run's time limit is spent.") == 2
    assert "| 0. env | skipped (time limit) |" in text


def test_arguments(load_script, tmp_path):
    gpu_check = load_script("benchmarks/gpu_check.py")
    args = gpu_check._parse(["--quick", "--sections", "env, layers", "--channels-last"])
    assert args.sections == ["env", "layers"] and args.memory_format == torch.channels_last
    assert (args.reps, args.model_reps, args.distractors) == (5, 3, 100_000)
    with pytest.raises(SystemExit):
        gpu_check._parse(["--sections", "env,nope"])
    report = gpu_check.Report(tmp_path / "a" / "r.md")
    report.table("x", "y")
    report.row(1, 2)
    report.save()
    assert (tmp_path / "a" / "r.md").read_text() == "| x | y |\n|---|---|\n| 1 | 2 |\n"


@pytest.mark.slow
def test_smoke_runs_the_timing_sections_at_tiny_sizes(tmp_path):
    done = _run("--smoke", "--sections", "layers,models,megaface", "--out", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    text = (tmp_path / REPORT).read_text()
    assert "| 16->32 @8x8 | fp32 |" in text and "| mobilefacenet | fp32 |" in text and "| 152,240 |" in text
