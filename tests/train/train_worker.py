"""Subprocess entry for the slow training tests (plain python or torchrun): stand-ins + train(cfg).

    python tests/train/train_worker.py OUT_DIR '{"schedule": {"total_steps": 30}}' [--slow SECONDS]

Runs ``train`` on the tiny stand-ins of ``train_standins`` with the given section overrides, then
writes this rank's final backbone and head parameters to ``OUT_DIR/rank<R>.pt`` and exits with the
CLI's convention (128 + signal when interrupted).
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import train_standins as S  # noqa: E402
from facerec.train.loop import train  # noqa: E402


class SlowDataset(S.TinyDataset):
    """Sleeps per item so a test can kill the run mid-way."""

    delay = 0.0

    def __getitem__(self, i):
        time.sleep(self.delay)
        return super().__getitem__(i)


def main() -> int:
    out_dir, overrides = sys.argv[1], json.loads(sys.argv[2])
    if "--slow" in sys.argv:
        SlowDataset.delay = float(sys.argv[sys.argv.index("--slow") + 1])
    torch.set_num_threads(1)
    S.install(None, dataset_cls=SlowDataset)
    summary = train(S.tiny_config(out_dir, **overrides))
    rank = int(os.environ.get("RANK", "0"))
    backbone = summary["backbone"]
    torch.save({"step": summary["step"], "backbone": backbone.state_dict()},
               Path(out_dir) / f"rank{rank}.pt")
    return 128 + summary["signal"] if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
