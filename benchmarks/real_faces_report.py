"""Tables and figures of the fair real-face study (benchmarks/real_faces_study.py) from its result files.

    .venv/bin/python benchmarks/real_faces_study.py --out runs/real_faces_study --report
    .venv/bin/python benchmarks/real_faces_report.py --out runs/real_faces_study --plot docs/real_faces_curves.png \
        --export-pretrained data/pretrained

Every table is built from ``<out>/<stage>/<run>/result.json`` (committed copies: docs/results/real_faces_study/);
missing runs are left out, so the report can be read while the study runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_faces_study as st  # noqa: E402

__all__ = ["planned_final", "sweep_table", "aids_table", "final_table", "paired_table", "usage_table", "report",
           "filter_parts", "filter_parts_table", "curve_table",
           "plot_curves", "export_pretrained"]

_METRICS = (("accuracy", "10-fold acc. %"), ("tar_far1e-3", "TAR@FAR=1e-3 %"), ("rank1", "rank-1 %"))


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _stat(values: list[float], pct: bool = True) -> str:
    k, d = (100.0, 1) if pct else (1.0, 2)
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    each = ", ".join(f"{k * v:.{d}f}" for v in values)
    return f"{k * mean:.{d}f} ± {k * std:.{d}f} ({each})" if len(values) > 1 else f"{k * mean:.{d}f}"


def sweep_table(runs: dict[str, dict]) -> str:
    """One row per (variant, lr) of the sweep, scored on the held-out train/ identities; chosen lr in bold."""
    lines = ["| variant | lr | 10-fold acc. % | TAR@FAR=1e-3 % | rank-1 % | selection score | final loss |",
             "|---|---|---|---|---|---|---|"]
    for variant in ("mobilefacenet", "drconv_mobilefacenet"):
        chosen = st.choose_lr(runs, variant)
        for lr in st.sweep_lrs(runs, variant):
            r = runs.get(st.run_name(variant, lr, 0))
            if r is None:
                continue
            mark = "**" if lr == chosen else ""
            lines.append(f"| {variant} | {mark}{lr:g}{mark} | {_pct(r['accuracy'])} | {_pct(r['tar_far1e-3'])} | "
                         f"{_pct(r['rank1'])} | {_pct(st.selection_score(r))} | {r['final_loss']:.2f} |")
    return "\n".join(lines)


def _grouped(runs: dict[str, dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs.values():
        groups.setdefault((r["variant"], r["lr"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def _rows(groups, order) -> list[str]:
    lines = []
    for (variant, lr), mine in sorted(groups.items(), key=lambda kv: (order(kv[0][0]), kv[0][1])):
        cells = " | ".join(_stat([r[key] for r in mine]) for key, _ in _METRICS)
        lines.append(f"| {variant} | {lr:g} | {len(mine)} | {cells} | {_stat([r['final_loss'] for r in mine], False)} "
                     f"| {_stat([st.selection_score(r) for r in mine])} |")
    return lines


def aids_table(sweep: dict[str, dict], aids: dict[str, dict]) -> str:
    """The shipped layer against the paper-exact one (guide_norm=False, init="spread") at DRConv's chosen lr."""
    lr = st.choose_lr(sweep, "drconv_mobilefacenet")
    if lr is None:
        return "(the DRConv sweep is not complete)"
    both = {**{k: v for k, v in sweep.items() if v["variant"] == "drconv_mobilefacenet" and v["lr"] == lr},
            **{k: v for k, v in aids.items() if v["lr"] == lr}}
    header = ["| layer | lr | seeds | " + " | ".join(h for _, h in _METRICS) + " | final loss | selection score |",
              "|---|---|---|---|---|---|---|---|"]
    choice = st.choose_setting(both, lr)
    note = f"\n\nChosen for the final runs: `{choice}`." if choice else "\n\n(not all four runs are done)"
    return "\n".join(header + _rows(_grouped(both), lambda v: 0 if "@" not in v else 1)) + note


def _final_order(variant: str) -> int:
    order = ("mobilefacenet", "drconv_mobilefacenet", "drconv_mobilefacenet@paper",
             st.change_name("drconv_mobilefacenet"), st.change_name("drconv_mobilefacenet@paper"),
             "local_mobilefacenet", "condconv_mobilefacenet", "drconv_mobilefacenet@basis")
    return order.index(variant) if variant in order else len(order)


def final_table(final: dict[str, dict]) -> str:
    """Per variant on val/: mean ± sample std over seeds (each seed's value in brackets)."""
    header = ["| variant | lr | seeds | " + " | ".join(h for _, h in _METRICS) + " | final loss | selection score |",
              "|---|---|---|---|---|---|---|---|"]
    return "\n".join(header + _rows(_grouped(final), _final_order))


def curve_table(final: dict[str, dict]) -> str:
    """val/ scores along the runs: one column per (variant, lr), each cell the mean over its seeds of 10-fold
    accuracy / TAR@FAR=1e-3 / rank-1 % at that step (steps every seed of the column has); last row the mean final
    training loss."""
    groups = sorted(_grouped(final).items(), key=lambda kv: (_final_order(kv[0][0]), kv[0][1]))
    if not groups:
        return "(no final run finished)"
    curves = [[{row[0]: row[1:] for row in r["eval_curve"]} for r in runs] for _, runs in groups]
    steps = sorted(set.union(*(set(c) for cs in curves for c in cs)))
    head = " | ".join(f"{v} ({len(runs)} seed{'s' if len(runs) > 1 else ''})" for (v, _), runs in groups)
    lines = [f"| step | {head} |", "|---|" + "---|" * len(groups)]
    for step in steps:
        cells = []
        for cs in curves:
            if all(step in c for c in cs):
                cells.append(" / ".join(_pct(statistics.mean(c[step][i] for c in cs)) for i in range(3)))
            else:
                cells.append("")
        lines.append(f"| {step} | {' | '.join(cells)} |")
    losses = [f"{statistics.mean(r['final_loss'] for r in runs):.2f}" for _, runs in groups]
    lines.append(f"| loss | {' | '.join(losses)} |")
    return "\n".join(lines)


def _drconv_setting(final: dict[str, dict]) -> str | None:
    """The DRConv layer setting of the final comparison (shipped or paper-exact) among ``final``."""
    found = {r["variant"] for r in final.values()} & {"drconv_mobilefacenet", "drconv_mobilefacenet@paper"}
    return min(found) if found else None


def paired_table(final: dict[str, dict], base: str = "mobilefacenet", other: str | None = None) -> str:
    """``other`` (default: the DRConv final setting) minus ``base``, paired by seed (same data order and initial
    generator seed), on val/."""
    other = other or _drconv_setting(final)
    plain = {r["seed"]: r for r in final.values() if r["variant"] == base}
    dr = {r["seed"]: r for r in final.values() if r["variant"] == other}
    seeds = sorted(set(plain) & set(dr))
    if not seeds:
        return f"(no seed has both {base} and {other} finished)"
    lines = [f"| metric | {other} − {base} per seed (points) | mean ± std |", "|---|---|---|"]
    for key, name in _METRICS + (("final_loss", "final loss"),):
        k = 1.0 if key == "final_loss" else 100.0
        diffs = [k * (dr[s][key] - plain[s][key]) for s in seeds]
        std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        lines.append(f"| {name} | {', '.join(f'{d:+.2f}' for d in diffs)} | {statistics.mean(diffs):+.2f} ± "
                     f"{std:.2f} |")
    return "\n".join(lines)


def usage_table(final: dict[str, dict]) -> str:
    """Guided-mask region usage of each DRConv final run on val/: per layer, regions used per face and the
    largest mean area share of one region."""
    lines = ["| run | layer | mask | regions used per face (of m) | largest region's mean share | unused |",
             "|---|---|---|---|---|---|"]
    for name, r in sorted(final.items()):
        for u in r.get("region_usage", []):
            lines.append(f"| {name} | {u['layer']} | {u['mask_size'][0]}x{u['mask_size'][1]} | "
                         f"{u['regions_used_mean']:.2f} of {len(u['area_fraction_mean'])} | "
                         f"{max(u['area_fraction_mean']):.2f} | {len(u['unused_regions'])} |")
    return "\n".join(lines)


def filter_parts(state: dict) -> dict[str, float]:
    """How far a paper-generator DRConv's regions are from a plain conv, from a checkpoint's ``model`` state dict:
    over its layers, the mean (and max) ratio of one region's delta ``expand.bias_j`` and dynamic part
    ``expand.weight_j`` (Frobenius norms, (O, C) each) to the shared filter's (O, C) norm. {} without such layers."""
    import torch

    deltas, dynamics = [], []
    for key, shared in state.items():
        if not key.endswith("filter_generator.shared"):
            continue
        prefix = key[: -len("shared")]
        m = state[prefix + "expand.bias"].numel() // shared.numel()
        norm = float(shared.float().norm())
        for name, out in (("expand.bias", deltas), ("expand.weight", dynamics)):
            per_region = state[prefix + name].float().reshape(m, -1)
            out.append(float(torch.linalg.vector_norm(per_region, dim=1).mean()) / norm)
    if not deltas:
        return {}
    return {"layers": len(deltas), "delta_mean": statistics.mean(deltas), "delta_max": max(deltas),
            "dynamic_mean": statistics.mean(dynamics), "dynamic_max": max(dynamics)}


def filter_parts_table(out: Path) -> str:
    """``filter_parts`` of the newest checkpoint of every final DRConv (paper generator) run found under ``out``
    (checkpoints are not committed: this reads the machine's runs)."""
    import torch

    lines = ["| run | step | layers | region delta / shared (mean, max) | dynamic part / shared (mean, max) |",
             "|---|---|---|---|---|"]
    for run in sorted((out / "final").glob("drconv_mobilefacenet*")):
        ckpts = sorted(run.glob("ckpt_*.pt"))
        if not ckpts:
            continue
        parts = filter_parts(torch.load(ckpts[-1], map_location="cpu", weights_only=True)["model"])
        if parts:
            lines.append(f"| {run.name} | {int(ckpts[-1].stem.split('_')[1])} | {parts['layers']} | "
                         f"{parts['delta_mean']:.3f}, {parts['delta_max']:.3f} | "
                         f"{parts['dynamic_mean']:.3f}, {parts['dynamic_max']:.3f} |")
    return "\n".join(lines)


def planned_final(out: Path) -> dict[str, dict]:
    """The finished final runs at the chosen lrs and setting (``real_faces_study.planned_final``)."""
    names = st.planned_final(out)
    return {k: v for k, v in st.load_stage(out, "final").items() if k in names}


def report(out: Path) -> str:
    sweep, aids, final = (st.load_stage(out, s) for s in ("sweep", "aids", "final"))
    names = st.planned_final(out)
    planned = {k: v for k, v in final.items() if k in names}
    lr_d = st.choose_lr(sweep, "drconv_mobilefacenet")
    parts = ["## lr sweep (held-out train/ identities)", sweep_table(sweep),
             "## training aids at DRConv's lr", aids_table(sweep, aids),
             "## final runs (val/)", final_table(planned), "### paired difference", paired_table(planned),
             "### val/ along the runs (mean over seeds)", curve_table(planned),
             "### region usage", usage_table(planned)]
    setting = _drconv_setting(planned)
    if setting and any(r["variant"] == st.change_name(setting) for r in planned.values()):
        change = st.change_name(setting)
        parts += [f"## the one change: `{change}` (DRConv trails the plain model)",
                  paired_table(planned, setting, change), paired_table(planned, "mobilefacenet", change)]
    off_aids = {k: v for k, v in aids.items() if lr_d is not None and v["lr"] != lr_d}
    off_final = {k: v for k, v in final.items() if k not in planned}
    if off_aids or off_final:
        parts += ["## runs at an lr or setting the study no longer chooses (kept, not in the tables above)",
                  final_table({**off_aids, **off_final})]
    return "\n\n".join(parts)


def plot_curves(final: dict[str, dict], path: Path) -> None:
    """Training loss and val accuracy against steps for every final run (two panels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"mobilefacenet": "#000000", "drconv_mobilefacenet": "#D55E00", "drconv_mobilefacenet@paper": "#D55E00",
               st.change_name("drconv_mobilefacenet"): "#E69F00",
               st.change_name("drconv_mobilefacenet@paper"): "#E69F00",
               "local_mobilefacenet": "#009E73", "condconv_mobilefacenet": "#0072B2",
               "drconv_mobilefacenet@basis": "#CC79A7"}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in sorted(final.items()):
        colour = colours.get(r["variant"], "#999999")
        style = ("-", "--", ":")[r["seed"] % 3]
        steps, losses = zip(*r["loss_curve"])
        ax_loss.plot(steps, losses, color=colour, linestyle=style, linewidth=1, label=f"{r['variant']} s{r['seed']}")
        if r["eval_curve"]:
            es = [row[0] for row in r["eval_curve"]]
            ax_acc.plot(es, [100 * row[1] for row in r["eval_curve"]], color=colour, linestyle=style, marker="o",
                        markersize=3, linewidth=1)
    ax_loss.set_xlabel("step (batch 64)")
    ax_loss.set_ylabel("training loss (AM-Softmax)")
    ax_acc.set_xlabel("step (batch 64)")
    ax_acc.set_ylabel("val/ 10-fold accuracy %")
    ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def export_pretrained(out: Path, dest: Path) -> list[Path]:
    """The best planned final run by val/ 10-fold accuracy of each shipped variant -> ``dest/<variant>.pt`` (the DRConv
    model from the layer setting the aids stage chose; the basis generator and the change are settings, not
    exported)."""
    final = planned_final(out)
    records = [dict(r, variant=r["variant"].split("@")[0], run=name) for name, r in final.items()
               if not r["variant"].endswith(("@basis", st.CHANGE))]
    return st.rf.export_pretrained(records, out / "final", dest, run_dir=lambda r: out / "final" / r["run"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=st.ROOT / "runs" / "real_faces_study")
    ap.add_argument("--plot", type=Path, default=None, help="write the final runs' curves (PNG)")
    ap.add_argument("--filter-parts", action="store_true",
                    help="also print the per-region filter parts' size against the shared filter, from the newest "
                         "checkpoint of each final DRConv run under --out")
    ap.add_argument("--export-pretrained", type=Path, default=None, metavar="DIR",
                    help="write the best final run of each variant to DIR/<variant>.pt (data/pretrained)")
    args = ap.parse_args(argv)
    print(report(args.out))
    if args.filter_parts:
        print("\n### per-region filter parts (checkpoints)\n\n" + filter_parts_table(args.out))
    if args.plot:
        plot_curves(planned_final(args.out), args.plot)
    if args.export_pretrained:
        for path in export_pretrained(args.out, args.export_pretrained):
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
