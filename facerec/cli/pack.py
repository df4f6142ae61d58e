"""``facerec-pack SRC OUT.rec``: a folder of aligned faces, one sub-folder per person, packed into the InsightFace
RecordIO layout (:mod:`facerec.data.pack` writes it; this module parses argv and prints the outcome)."""
from __future__ import annotations

import logging
import os
import sys

import facerec.data.pack as _lib
from facerec.cli._args import library_parser, parse_face_size, reports_errors
from facerec.data.pack import pack_folder

__all__ = ["main"]


@reports_errors({ValueError: 2, FileNotFoundError: 2})
def main(argv=None) -> int:
    parser = library_parser("facerec-pack", _lib)
    parser.add_argument("src", help="folder with one sub-folder of aligned images per identity")
    parser.add_argument("out", help="output .rec (the .idx, property and .classes.txt go beside it)")
    parser.add_argument("--size", type=parse_face_size, default=(112, 112),
                        help="112x112 (default) or 112x96: the size every image must have")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images")
    parser.add_argument("--skip-bad", action="store_true", help="list bad images instead of stopping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = pack_folder(args.src, args.out, size=args.size, quality=args.quality, skip_bad=args.skip_bad)
    skipped = "".join(f"skipped: {line}\n" for line in summary["skipped"])
    print(f"{skipped}packed {summary['images']} images of {summary['classes']} identities -> {summary['rec']} "
          f"(+ {os.path.basename(summary['idx'])}, property, {os.path.basename(summary['classes_file'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
