"""``facerec-verify``: score a trained checkpoint on .bin pair sets (LFW, CFP-FP, AgeDB-30, ...).

    facerec-verify --checkpoint runs/ms1mv2_drconv_mobilefacenet/ckpt_00420000.pt \\
        --bin data/ms1m-v2/lfw.bin data/ms1m-v2/cfp_fp.bin data/ms1m-v2/agedb_30.bin --json verify.json

The 10-fold protocol of ``facerec.eval.verification`` (arcface_torch's): accuracy +- std over the folds with
and without flip, the mean best threshold (squared L2 distance of normalised embeddings), and the TAR at a
FAR (default 1e-3) over all pairs with flip. Images of any size the model takes: a .bin at the model's input
size, or 112x112 images for a 112x96 model (centre-cropped). Exit status 2 on a bad checkpoint or .bin.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from facerec.cli._runtime import prepare_process

__all__ = ["main", "format_table"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facerec-verify", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", required=True, help="a facerec training checkpoint (ckpt_*.pt)")
    p.add_argument("--bin", required=True, nargs="+", metavar="BIN", help="one or more .bin pair sets")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward (default 256)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--far", type=float, default=1e-3, help="false accept rate for the TAR column (default 1e-3)")
    p.add_argument("--nfolds", type=int, default=10, help="folds of the protocol (default 10)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    return p


def format_table(rows: list[dict], far: float) -> str:
    """Markdown table, one row per set (``rows`` as in the JSON output's ``sets``)."""
    lines = [f"| set | pairs | accuracy (flip) | accuracy (no flip) | threshold | TAR @ FAR={far:g} |",
             "|---|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['pairs']} | {r['acc']:.4f} +- {r['acc_std']:.4f} | "
                     f"{r['acc_noflip']:.4f} +- {r['acc_noflip_std']:.4f} | {r['threshold']:.2f} | "
                     f"{r['tar_at_far']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    prepare_process()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from facerec.data.verification import read_bin
    from facerec.eval.features import ModelFeatureExtractor
    from facerec.eval.verification import verify
    from facerec.models import load_backbone

    if args.batch_size < 1:
        print(f"facerec-verify: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    try:
        model = load_backbone(args.checkpoint, map_location=device)
        size = tuple(getattr(model, "input_size", (112, 112)))
        extractor = ModelFeatureExtractor(model, device=device, input_size=size)
        for path in args.bin:
            start = time.perf_counter()
            images, issame = read_bin(path)
            try:
                res = verify(extractor, images, issame, batch_size=args.batch_size, nfolds=args.nfolds,
                             fars=(args.far,))
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            rows.append({"set": Path(path).stem, "path": str(path), "pairs": res.num_pairs,
                         "image_size": list(images.shape[1:3]), **res.as_dict(), "far": args.far,
                         "tar_at_far": res.tar[args.far], "seconds": round(time.perf_counter() - start, 1)})
    except (ValueError, FileNotFoundError) as exc:
        print(f"facerec-verify: error: {exc}", file=sys.stderr)
        return 2
    name = getattr(model, "__class__").__name__
    print(f"{args.checkpoint} ({name}, input {size[0]}x{size[1]}, {device})")
    print(format_table(rows, args.far))
    if args.json:
        out = {"checkpoint": str(args.checkpoint), "input_size": list(size), "device": str(device),
               "nfolds": args.nfolds, "sets": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"results -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
