"""Command line of :mod:`facerec.models.complexity`: argv parsing and printed results.

Kept out of the library module, which neither parses argv nor prints.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from facerec.models.complexity import count_complexity, format_stage_table, format_table2
from facerec.models.registry import PAPER_TABLE2_MADDS, create_model, list_models

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="facerec-complexity",
                                     description="Parameters and paper-style MADDs of a registry model.")
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--input-size", nargs=2, type=int, default=[112, 112], metavar=("H", "W"))
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    size = (args.input_size[0], args.input_size[1])
    try:
        model = create_model(args.model, input_size=size, embedding_size=args.embedding_size)
    except ValueError as exc:
        parser.error(str(exc))
    cost = count_complexity(model, size)
    paper = PAPER_TABLE2_MADDS.get(args.model)
    if args.json:
        print(json.dumps({
            "model": args.model, "input_size": list(size), "embedding_size": args.embedding_size,
            "params": cost.params, "madds": cost.madds,
            "paper_madds": int(paper * 1e6) if paper else None, "paper_input_size": [112, 96],
            "stages": cost.stages(),
        }))
        return 0
    print(format_stage_table(args.model, cost))
    print()
    print("DRConv paper Table 2 (MobileFaceNet family, 112x96) beside ours:")
    print()
    rows = []
    for name in list_models():
        other = cost if name == args.model else count_complexity(
            create_model(name, input_size=size, embedding_size=args.embedding_size), size)
        rows.append((name, other))
    print(format_table2(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
