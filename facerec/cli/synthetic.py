"""``facerec-synthetic OUT``: the synthetic face set in the real formats (:mod:`facerec.data.synthetic` draws
and writes it; this module turns its options into flags and prints where the set is)."""
from __future__ import annotations

import json
import logging
import sys

import facerec.data.synthetic as _lib
from facerec.cli._args import library_parser
from facerec.data.synthetic import DEFAULTS, MARKER, ensure_synthetic, generate

__all__ = ["main"]


def main(argv=None) -> int:
    parser = library_parser("facerec-synthetic", _lib)
    parser.add_argument("out", help="output folder (e.g. data/synthetic)")
    for name, value in DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false",
                                help=f"skip the {name} part")
        elif isinstance(value, tuple):
            parser.add_argument(flag, type=int, nargs=2, default=value, metavar=("LO", "HI"))
        elif isinstance(value, float):
            parser.add_argument(flag, type=float, default=value, help="nuisance strength (0 = none, 1 = default)")
        else:
            parser.add_argument(flag, type=int, default=value)
    parser.add_argument("--force", action="store_true", help="regenerate even when a matching set exists")
    args = vars(parser.parse_args(argv))
    out, force = args.pop("out"), args.pop("force")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = generate(out, progress=True, **args) if force else ensure_synthetic(out, progress=True, **args)
    info = json.loads((path / MARKER).read_text(encoding="utf-8"))
    print(f"synthetic dataset ready in {path}: {json.dumps(info.get('summary', {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
