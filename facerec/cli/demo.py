"""``facerec-demo``: the command line of :mod:`facerec.demo` (argv parsing and the printed summary).

``main`` first prepares the process (``facerec.cli._runtime.prepare_process``: ``OMP_WAIT_POLICY=PASSIVE``
unless set, glibc malloc kept from unmapping large tensors), before torch is imported. The library itself
leaves the environment alone.
"""
from __future__ import annotations

import argparse
import logging
import sys

from facerec.cli._runtime import prepare_process

__all__ = ["main"]


def main(argv=None) -> int:
    prepare_process()
    from facerec.demo import QUICK_OVERRIDES, format_summary, log, run_demo

    parser = argparse.ArgumentParser(prog="facerec-demo", description="The one-command demo: synthetic faces -> "
                                     "DRConv-MobileFaceNet -> verification -> MegaFace -> masks.")
    parser.add_argument("--config", default="configs/demo.yaml", help="YAML config (default configs/demo.yaml)")
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (CI): tiny data, 30 steps")
    parser.add_argument("--megaface-flip", action="store_true",
                        help="flip-sum the MegaFace features (doubles that stage's time)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set schedule.total_steps=100)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    from facerec.config import load_config

    overrides = (list(QUICK_OVERRIDES) if args.quick else []) + args.overrides
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_demo(cfg, megaface_flip=args.megaface_flip)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    print()
    print(format_summary(summary))
    print(f"\nrun folder: {cfg.out_dir} (summary.md, summary.json, megaface/, masks/, checkpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
