"""Command line of :mod:`facerec.data.pack`: argv parsing and printed results.

Kept out of the library module, which neither parses argv nor prints.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import facerec.data.pack as _lib
from facerec.data.pack import _parse_size, pack_folder

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facerec-pack", description=_lib.__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder with one sub-folder of aligned images per identity")
    parser.add_argument("out", help="output .rec (the .idx, property and .classes.txt go beside it)")
    parser.add_argument("--size", type=_parse_size, default=(112, 112), help="HxW every image must have")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images")
    parser.add_argument("--skip-bad", action="store_true", help="list bad images instead of stopping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = pack_folder(args.src, args.out, size=args.size, quality=args.quality, skip_bad=args.skip_bad)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in summary["skipped"]:
        print(f"skipped: {line}")
    print(f"packed {summary['images']} images of {summary['classes']} identities -> {summary['rec']} "
          f"(+ {os.path.basename(summary['idx'])}, property, {os.path.basename(summary['classes_file'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
