"""Guided-mask figures of a DRConv model, as the DRConv paper's Fig. 3 (arXiv 2003.12243).

  facerec-masks --checkpoint runs/demo/ckpt_00000070.pt --images faces/ --layers all --out figs/masks
  facerec-masks --checkpoint CKPT --images a.jpg b.pgm data/train.rec lfw.bin --layers 0,8,-1 \\
      --format png,pdf,svg --dpi 600 --out figs/masks
  facerec-masks --checkpoint CKPT --list-layers
  facerec-masks --model drconv_mobilefacenet --images faces/ --out figs/untrained   (random weights)

Writes OUT/figure.{png,pdf,svg}, OUT/grid.png, OUT/masks/L??_<layer>.npy and OUT/region_stats.json.
"""
import argparse
import sys

from facerec.cli._runtime import prepare_process

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facerec-masks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a facerec training checkpoint (.pt)")
    src.add_argument("--model", help="a registry model name with fresh weights, e.g. drconv_mobilefacenet")
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files, folders, .rec or .bin files")
    p.add_argument("--layers", default="all", help="'all' or a comma list of DRConv layer names/indices (default all)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--list-layers", action="store_true", help="print every DRConv layer with its mask size and exit")
    p.add_argument("--align", action="store_true", help="align faces not at the input size (else resize)")
    p.add_argument("--dpi", type=int, default=300, help="PNG resolution (default 300)")
    p.add_argument("--format", default="png,pdf", help="figure formats among png,pdf,svg (default png,pdf)")
    p.add_argument("--max-images", type=int, default=8, help="faces in the figure, one row each (default 8)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the region colours over the face (default 0.5)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="model input size (default: the model's own, else 112 112)")
    return p


def _load_model(args):
    if args.checkpoint:
        from facerec.models import load_backbone

        return load_backbone(args.checkpoint, map_location=args.device), f"checkpoint {args.checkpoint}"
    from facerec.models import create_model

    kw = {"input_size": tuple(args.input_size)} if args.input_size else {}
    return create_model(args.model, **kw).to(args.device).eval(), f"model {args.model} (untrained weights)"


def main(argv=None) -> int:
    prepare_process()
    args = build_parser().parse_args(argv)
    from facerec.viz import find_mask_layers, load_images, mask_shapes, render_mask_figure

    try:
        model, source = _load_model(args)
        try:
            find_mask_layers(model)
        except ValueError as err:
            raise ValueError(f"{source} holds {type(model).__name__} without DRConv layers: {err}") from None
        size = tuple(args.input_size or getattr(model, "input_size", (112, 112)))
        if args.list_layers:
            print(f"DRConv layers of {source} at input {size[0]}x{size[1]}:")
            print(f"{'index':>5}  {'regions':>7}  {'mask':>7}  name")
            for layer, (h, w) in mask_shapes(model, size):
                print(f"{layer.index:>5}  {layer.regions:>7}  {f'{h}x{w}':>7}  {layer.name}")
            return 0
        if not args.images or not args.out:
            raise ValueError("--images and --out are required unless --list-layers is given")
        loaded = load_images(args.images, size, align=args.align, max_images=args.max_images)
        for note in loaded.notes:
            print(f"note: {note}")
        written = render_mask_figure(model, loaded.images, args.out, args.layers, args.format, dpi=args.dpi,
                                     alpha=args.alpha, names=loaded.names, notes=loaded.notes)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"facerec-masks: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(loaded.images)} faces x {len(written['masks'])} layers from {source}:")
    for key in ("png", "pdf", "svg", "grid", "stats"):
        if key in written:
            print(f"  {key:5s} {written[key]}")
    print(f"  masks {len(written['masks'])} .npy files in {written['stats'].parent / 'masks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
