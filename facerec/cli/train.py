"""Train a face-recognition backbone from a YAML config (DRConv paper section 4.2 recipe).

    facerec-train --config configs/demo.yaml
    facerec-train --config configs/ms1mv2_drconv_mobilefacenet.yaml --set train.amp=bf16
    torchrun --standalone --nproc_per_node=8 train_face.py --config configs/ms1mv2_drconv_mobilefacenet.yaml
    facerec-train --config configs/demo.yaml --resume auto      # continue runs/demo

The run folder (``--out``, default ``runs/<config name>``) receives config.yaml, train.log,
metrics.jsonl, TensorBoard scalars (when installed) and ckpt_<step>.pt files.
"""
from __future__ import annotations

import argparse
import signal
import sys

from facerec.cli._runtime import prepare_process

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    parser = argparse.ArgumentParser(prog="facerec-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("--out", help="run folder (default runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--resume", help="'auto' (newest valid checkpoint in the run folder) or a .pt path")
    args = parser.parse_args(argv)

    from facerec.config import load_config
    from facerec.train.distributed import DistInfo
    from facerec.train.loop import NonFiniteLossError, train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    try:
        summary = train(cfg)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if summary["interrupted"]:
        print(f"interrupted at step {summary['step']}; checkpoint {summary['checkpoint']}", file=sys.stderr)
        return 128 + (summary["signal"] or signal.SIGTERM)
    if not DistInfo.from_env().is_main:
        return 0
    accs = ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items() if k.endswith("_acc"))
    print(f"done: step {summary['step']}, checkpoint {summary['checkpoint']}" + (f", {accs}" if accs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
