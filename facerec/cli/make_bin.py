"""``facerec-make-bin FOLDER PAIRS OUT.bin``: a verification ``.bin`` from a folder of aligned faces and an
LFW-style pairs file (:func:`facerec.data.verification.build_bin_from_pairs`; this module parses argv)."""
from __future__ import annotations

import argparse
import logging
import sys

from facerec.cli._args import reports_errors
from facerec.data.verification import build_bin_from_pairs

__all__ = ["main"]


@reports_errors({ValueError: 2, FileNotFoundError: 2})
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facerec-make-bin",
                                     description="Build a verification .bin from an image folder + pairs.txt")
    parser.add_argument("folder", help="aligned images: FOLDER/<name>/<name>_<num:04d>.<ext>")
    parser.add_argument("pairs", help="LFW-style pairs file: 'name i j' or 'name_a i name_b j' per line")
    parser.add_argument("out", help="output .bin")
    parser.add_argument("--digits", type=int, default=4, help="zero padding of the image numbers (default 4)")
    parser.add_argument("--skip-missing", action="store_true", help="leave out pairs whose image is missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = build_bin_from_pairs(args.folder, args.pairs, args.out, digits=args.digits,
                                   skip_missing=args.skip_missing)
    print(f"wrote {args.out}: {summary['pairs']} pairs ({summary['positives']} same-person), "
          f"{len(summary['skipped'])} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
