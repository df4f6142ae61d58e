"""``facerec-export``: a trained checkpoint as an ONNX file, checked against PyTorch with onnxruntime.

    facerec-export --checkpoint runs/demo/ckpt_00000070.pt --out model.onnx
    facerec-export --model drconv_mobilefacenet --out untrained.onnx      (fresh weights, e.g. to try a runtime)

The file maps ``images`` (B, 3, H, W) float RGB, normalised as (x / 255 - 0.5) / 0.5, to ``embeddings``
(B, D), with a dynamic batch size; every variant exports, DRConv through an export forward of the same maths
(``facerec.models.export``). With onnxruntime installed (``pip install "facerec[export]"``) the file is run on
random inputs and the largest absolute difference of the L2-normalised embeddings against PyTorch is printed;
above ``--tolerance`` the command fails (exit status 1). A DRConv input on which some pixel's two best regions
score within float rounding of each other is drawn again: there two correct float32 runtimes may pick different
regions (``facerec.models.export.TIE_MARGIN``).
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facerec-export", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a facerec training checkpoint (ckpt_*.pt)")
    src.add_argument("--model", help="a registry model name with fresh weights, e.g. drconv_mobilefacenet")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --model: input size (default 112 112)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17,
                   help="ONNX opset (default 17; at least 13 for the paper generator's 1x1 DRConvs)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |ONNX - PyTorch| on normalised embeddings (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from facerec.models import create_model, load_backbone
    from facerec.models.export import compare_onnx, export_onnx

    try:
        if args.checkpoint:
            model, source = load_backbone(args.checkpoint), args.checkpoint
        else:
            kw = {"input_size": tuple(args.input_size)} if args.input_size else {}
            model, source = create_model(args.model, **kw).eval(), f"{args.model} (untrained)"
        path = export_onnx(model, args.out, opset=args.opset)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"facerec-export: error: {exc}", file=sys.stderr)
        return 2
    h, w = model.input_size
    print(f"{source} -> {path} ({path.stat().st_size / 1e6:.1f} MB; images (B, 3, {h}, {w}) -> embeddings)")
    if args.no_check:
        return 0
    try:
        diff = compare_onnx(model, path, batch_size=4)
    except ImportError as exc:
        print(f"not checked: {exc}")
        return 0
    except ValueError as exc:
        print(f"facerec-export: check failed: {exc}", file=sys.stderr)
        return 1
    ok = diff <= args.tolerance
    print(f"onnxruntime vs PyTorch, 4 random inputs (no near-tied guided mask): max |diff| of normalised embeddings "
          f"{diff:.2e} "
          f"({'ok' if ok else 'FAILED'}, tolerance {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
