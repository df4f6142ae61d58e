"""MegaFace Challenge 1 with the refined lists: ``extract`` features, then ``score`` them (devkit-identical).

    facerec-megaface extract --checkpoint CKPT --images ROOT --list LIST.json --out OUT [--format matio|npy]
    facerec-megaface score --probe-list P.json --distractor-list D.json --probe-features X \
        --distractor-features Y [--feature-suffix SUFFIX] [--facescrub-noises F --megaface-noises F] --out DIR

``extract`` runs under torchrun too (``torchrun ... eval_megaface.py extract ...``; each rank takes every
world_size-th chunk of the list). The library code is ``facerec.eval.megaface*``; the protocol is described
in docs/megaface.md.
"""
from __future__ import annotations

import argparse
import logging
import sys

from facerec.cli._runtime import prepare_process


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facerec-megaface", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="features of every listed image (flip-sum, L2) as a matio tree or .npy")
    e.add_argument("--checkpoint", required=True, help="a facerec training checkpoint (ckpt_*.pt)")
    e.add_argument("--images", required=True, help="image root; listed paths are relative to it")
    e.add_argument("--list", required=True, help='template list JSON ({"path": [...]}, "id" optional)')
    e.add_argument("--out", required=True, help="matio: output directory; npy: output .npy file")
    e.add_argument("--format", choices=("matio", "npy"), default="matio")
    e.add_argument("--feature-suffix", default="_facerec.bin", help="matio file ending (default _facerec.bin)")
    flip = e.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=True,
                      help="add the mirrored image's features (default)")
    flip.add_argument("--no-flip", dest="flip", action="store_false")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--workers", type=int, default=2, help="image decoding processes")
    e.add_argument("--chunk-size", type=int, default=4096, help="images per resumable unit")
    e.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")

    s = sub.add_parser("score", help="rank-1, CMC and TAR@FAR for each distractor list; writes DIR/results.json")
    s.add_argument("--probe-list", required=True, help="facescrub_features_list.json (paths + ids)")
    s.add_argument("--distractor-list", required=True, action="append", help="repeat for several lists")
    s.add_argument("--probe-features", required=True, help="matio tree directory or packed .npy")
    s.add_argument("--distractor-features", required=True, action="append",
                   help="matio tree (shared by all lists) or one packed .npy per --distractor-list")
    s.add_argument("--feature-suffix", default=None, help="matio file ending, e.g. _facerec.bin")
    s.add_argument("--facescrub-noises", default=None, help="InsightFace facescrub_noises.txt (refined lists)")
    s.add_argument("--megaface-noises", default=None, help="InsightFace megaface_noises.txt (refined lists)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--block-size", type=int, default=8192,
                   help="distractors per block W: bounds memory (block buffers about 17 x probes x W bytes, "
                        "plus a 0.46 GB lookup table for 3,530 probes)")
    s.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    s.add_argument("--algo", default=None, help="name in the output files (default: from the suffix)")
    s.add_argument("--no-plot", action="store_true")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _extract(args) -> int:
    import torch

    from facerec.data.megaface import read_template_list
    from facerec.eval.features import ModelFeatureExtractor
    from facerec.eval.megaface_extract import extract_list
    from facerec.models import load_backbone
    from facerec.train.distributed import DistInfo, cleanup_distributed, init_distributed

    local = DistInfo.from_env().local_rank
    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    info = init_distributed("cuda" if device.startswith("cuda") else "cpu")
    try:
        model = load_backbone(args.checkpoint, map_location=device)
        extractor = ModelFeatureExtractor(model, device=device,
                                          input_size=tuple(getattr(model, "input_size", (112, 112))))
        paths, _ = read_template_list(args.list)
        out = extract_list(extractor, args.images, paths, args.out, fmt=args.format, suffix=args.feature_suffix,
                           batch_size=args.batch_size, workers=args.workers, flip=args.flip,
                           chunk_size=args.chunk_size)
        if info.is_main:
            print(f"features of {len(paths)} images -> {out}")
    finally:
        cleanup_distributed()
    return 0


def _score(args) -> int:
    from facerec.eval.megaface_io import score_files, summary_line

    res = score_files(args.probe_list, args.distractor_list, args.probe_features, args.distractor_features,
                      args.out, feature_suffix=args.feature_suffix, facescrub_noises=args.facescrub_noises,
                      megaface_noises=args.megaface_noises, algo=args.algo, plot=not args.no_plot,
                      block_size=args.block_size, device=args.device, progress=not args.quiet)
    for entry in res["results"]:
        print(summary_line(entry))
    return 0


def main(argv=None) -> int:
    prepare_process()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _extract(args) if args.command == "extract" else _score(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"facerec-megaface {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
