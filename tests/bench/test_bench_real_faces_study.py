"""Tests of benchmarks/real_faces_study.py (the fair real-face study): schedule, split, the choices between stages,
the resumable plan, run claims, and the report built from result files."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def st():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("real_faces_study", BENCH / "real_faces_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_milestones_follow_the_papers_fractions(st):
    assert st.milestones(420_000) == [252_000, 364_000, 406_000]
    assert st.milestones(400) == [240, 347, 387]
    assert st.milestones(1200) == [720, 1040, 1160]


def test_held_out_identities_are_disjoint_and_every_seventh(st):
    names = [f"id{i:03d}" for i in range(283)]
    trained, held = st.split_identities(list(reversed(names)))
    assert len(held) == 40 and not set(trained) & set(held) and len(trained) + len(held) == 283
    assert held[:2] == ["id003", "id010"]


def _write(out, stage, variant, lr, seed, acc, **extra):
    d = out / stage / f"{variant}_lr{lr:g}_s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "variant": variant, "lr": lr, "seed": seed, "accuracy": acc, "tar_far1e-3": acc / 2,
              "rank1": acc, "final_loss": 5.0, "loss_curve": [[10, 6.0], [20, 5.0]], "eval_curve": [[20, acc, 0, 0]],
              "region_usage": [], **extra}
    (d / "result.json").write_text(json.dumps(record))


def test_plan_moves_from_sweep_to_aids_to_final_with_the_chosen_lrs(st, tmp_path):
    plan = st.plan(tmp_path)
    assert {r[0] for r in plan} == {"sweep"} and len(plan) == 2 * len(st.LRS)
    for lr in st.LRS:                                   # plain best at 0.05, DRConv best at 0.025
        _write(tmp_path, "sweep", "mobilefacenet", lr, 0, 0.9 - abs(lr - 0.05))
        _write(tmp_path, "sweep", "drconv_mobilefacenet", lr, 0, 0.9 - abs(lr - 0.025))
    assert st.choose_lr(st.load_stage(tmp_path, "sweep"), "mobilefacenet") == 0.05
    aids = [r for r in st.plan(tmp_path) if r[0] == "aids"]
    assert aids == [("aids", "drconv_mobilefacenet@paper", 0.025, 0), ("aids", "drconv_mobilefacenet@paper", 0.025, 1),
                    ("aids", "drconv_mobilefacenet", 0.025, 1)]
    # before the aids stage decides the setting, only the finals that do not wait for it are planned, after the aids
    early = st.plan(tmp_path)
    final = [r for r in early if r[0] == "final"]
    assert [r[0] for r in early[-len(final) - 3:-len(final)]] == ["aids"] * 3
    assert ("final", "mobilefacenet", 0.05, 0) in final and ("final", "drconv_mobilefacenet@basis", 0.025, 0) in final
    assert not [r for r in final if r[1].startswith("drconv_mobilefacenet") and "@basis" not in r[1]]
    assert len(final) == 6 and not st._all_planned(tmp_path)
    # the paper-exact layer a little behind, within the seed spread: fidelity wins the tie
    _write(tmp_path, "aids", "drconv_mobilefacenet", 0.025, 1, 0.80)
    _write(tmp_path, "aids", "drconv_mobilefacenet@paper", 0.025, 0, 0.86)
    _write(tmp_path, "aids", "drconv_mobilefacenet@paper", 0.025, 1, 0.84)
    final = [r for r in st.plan(tmp_path) if r[0] == "final"]
    assert ("final", "drconv_mobilefacenet@paper", 0.025, 2) in final
    assert ("final", "mobilefacenet", 0.05, 2) in final and ("final", "local_mobilefacenet", 0.05, 0) in final
    assert ("final", "drconv_mobilefacenet@basis", 0.025, 0) in final and len(final) == 9
    # the 3-seed comparison comes first, seed by seed, then the one-seed variants
    assert [(r[1], r[3]) for r in final] == [
        ("drconv_mobilefacenet@paper", 0), ("mobilefacenet", 0), ("drconv_mobilefacenet@paper", 1),
        ("mobilefacenet", 1), ("drconv_mobilefacenet@paper", 2), ("mobilefacenet", 2), ("local_mobilefacenet", 0),
        ("condconv_mobilefacenet", 0), ("drconv_mobilefacenet@basis", 0)]


def _sweep(out, best: dict[str, float], lrs=None):
    for variant, top in best.items():
        for lr in lrs or (0.0125, 0.025, 0.05, 0.1):
            _write(out, "sweep", variant, lr, 0, 0.9 - abs(lr - top))


def test_sweep_grid_extends_while_the_best_lr_is_at_its_edge(st, tmp_path):
    _sweep(tmp_path, {"drconv_mobilefacenet": 0.0, "mobilefacenet": 1.0})    # best at the lowest / highest lr
    sweep = st.load_stage(tmp_path, "sweep")
    assert st.sweep_lrs(sweep, "drconv_mobilefacenet") == (0.00625, 0.0125, 0.025, 0.05, 0.1)
    assert st.sweep_lrs(sweep, "mobilefacenet") == (0.0125, 0.025, 0.05, 0.1, 0.2)
    assert st.choose_lr(sweep, "drconv_mobilefacenet") is None          # the later stages wait for the new point
    assert not [r for r in st.plan(tmp_path) if r[0] != "sweep"]
    assert [r for r in st.plan(tmp_path) if r[2] in (0.00625, 0.2)] == [
        ("sweep", "drconv_mobilefacenet", 0.00625, 0), ("sweep", "mobilefacenet", 0.2, 0)]
    _write(tmp_path, "sweep", "drconv_mobilefacenet", 0.00625, 0, 0.5)  # worse: the edge lr was the best
    _write(tmp_path, "sweep", "mobilefacenet", 0.2, 0, 0.95)            # better: one more, then the cap
    sweep = st.load_stage(tmp_path, "sweep")
    assert st.choose_lr(sweep, "drconv_mobilefacenet") == 0.0125
    assert st.sweep_lrs(sweep, "mobilefacenet")[-1] == 0.4 and st.choose_lr(sweep, "mobilefacenet") is None
    _write(tmp_path, "sweep", "mobilefacenet", 0.4, 0, 0.99)
    sweep = st.load_stage(tmp_path, "sweep")
    assert len(st.sweep_lrs(sweep, "mobilefacenet")) == 4 + st.MAX_EXTENSIONS
    assert st.choose_lr(sweep, "mobilefacenet") == 0.4
    assert ("aids", "drconv_mobilefacenet@paper", 0.0125, 0) in st.plan(tmp_path)


def test_final_runs_at_an_lr_no_longer_chosen_stay_out_of_the_tables(st, tmp_path):
    import real_faces_report as rep
    _sweep(tmp_path, {"drconv_mobilefacenet": 0.025, "mobilefacenet": 0.05})
    for seed in range(2):
        _write(tmp_path, "aids", "drconv_mobilefacenet@paper", 0.025, seed, 0.5)
    _write(tmp_path, "aids", "drconv_mobilefacenet", 0.025, 1, 0.9)
    _write(tmp_path, "final", "mobilefacenet", 0.05, 0, 0.80)
    _write(tmp_path, "final", "drconv_mobilefacenet", 0.025, 0, 0.82)
    _write(tmp_path, "final", "drconv_mobilefacenet", 0.1, 0, 0.60)     # made before the lr choice moved
    assert st.planned_final(tmp_path) >= {"mobilefacenet_lr0.05_s0", "drconv_mobilefacenet_lr0.025_s0"}
    assert "drconv_mobilefacenet_lr0.1_s0" not in st.planned_final(tmp_path)
    text = rep.report(tmp_path)
    tables, outside = text.split("no longer chooses")
    assert "+2.00" in tables and "60.0" not in tables and "| drconv_mobilefacenet | 0.1 | 1 | 60.0" in outside


def test_shipped_layer_kept_when_clearly_ahead(st):
    runs = {}
    for name, accs in (("drconv_mobilefacenet", (0.90, 0.91)), ("drconv_mobilefacenet@paper", (0.80, 0.81))):
        for seed, acc in enumerate(accs):
            runs[st.run_name(name, 0.05, seed)] = {"accuracy": acc, "tar_far1e-3": acc, "rank1": acc}
    assert st.choose_setting(runs, 0.05) == "drconv_mobilefacenet"
    del runs[st.run_name("drconv_mobilefacenet@paper", 0.05, 1)]
    assert st.choose_setting(runs, 0.05) is None


def test_claims_are_exclusive_and_a_dead_claim_is_taken_over(st, tmp_path):
    run = tmp_path / "sweep" / "x"
    assert st.try_claim(run)
    assert (run / "claim").read_text().split()[1] == str(os.getpid())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / "claim").write_text(f"{os.uname().nodename} {dead.stdout.strip()}\n")
    assert st.try_claim(run)                                          # its process is gone


def test_report_reads_result_files(st, tmp_path):
    import real_faces_report as rep
    for seed in range(2):
        _write(tmp_path, "final", "mobilefacenet", 0.05, seed, 0.80 + seed / 100)
        _write(tmp_path, "final", "drconv_mobilefacenet", 0.025, seed, 0.82 + seed / 100, region_usage=[
            {"layer": "stages.0.0.guide", "mask_size": [56, 48], "regions_used_mean": 7.5,
             "area_fraction_mean": [0.5, 0.5], "unused_regions": []}])
    final = st.load_stage(tmp_path, "final")
    table = rep.final_table(final)
    assert "| mobilefacenet | 0.05 | 2 | 80.5 ± 0.7 (80.0, 81.0)" in table
    assert "| accuracy" not in table and "+2.00, +2.00 | +2.00 ± 0.00" in rep.paired_table(final)
    assert "7.50 of 2" in rep.usage_table(final)
    curves = rep.curve_table(final)     # eval_curve [[20, acc, 0, 0]]: mean over the 2 seeds at step 20
    assert "| 20 | 80.5 / 0.0 / 0.0 | 82.5 / 0.0 / 0.0 |" in curves and "| loss | 5.00 | 5.00 |" in curves
    assert "mobilefacenet (2 seeds) | drconv_mobilefacenet (2 seeds)" in curves
    rep.plot_curves(final, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_results_sync_both_ways(st, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "docs"
    _write(out, "sweep", "mobilefacenet", 0.05, 0, 0.8)
    (results / "final").mkdir(parents=True)
    (results / "final" / "mobilefacenet_lr0.05_s1.json").write_text('{"seed": 1}')
    st.sync_results(out, results)
    assert json.loads((results / "sweep" / "mobilefacenet_lr0.05_s0.json").read_text())["accuracy"] == 0.8
    assert json.loads((out / "final" / "mobilefacenet_lr0.05_s1" / "result.json").read_text()) == {"seed": 1}


def test_export_pretrained_takes_the_best_final_run_of_each_shipped_variant(st, tmp_path):
    import real_faces_report as rep
    import torch

    from facerec.models import create_model, load_backbone
    out = tmp_path / "runs"
    _sweep(out, {"drconv_mobilefacenet": 0.05, "mobilefacenet": 0.05})
    cfg = {"model": {"name": "mobilefacenet", "input_size": [112, 96], "embedding_size": 128}}
    for seed, acc in ((0, 0.80), (1, 0.85)):
        _write(out, "final", "mobilefacenet", 0.05, seed, acc, accuracy_std=0.01, steps=10, warmup=1, batch=64)
        model = create_model("mobilefacenet", input_size=(112, 96))
        torch.nn.init.constant_(model.embedding[0].weight, float(seed))
        torch.save({"config": cfg, "model": model.state_dict()},
                   out / "final" / f"mobilefacenet_lr0.05_s{seed}" / "ckpt_00000010.pt")
    _write(out, "final", "drconv_mobilefacenet@basis", 0.05, 0, 0.99)       # a setting: never exported
    written = rep.export_pretrained(out, tmp_path / "pretrained")
    assert [p.name for p in written] == ["mobilefacenet.pt"]
    stored = torch.load(written[0], weights_only=True)
    assert stored["card"]["seed"] == 1 and stored["card"]["accuracy"] == 0.85
    assert float(load_backbone(written[0]).embedding[0].weight.detach().mean()) == 1.0


def test_until_keeps_runs_that_cannot_finish_for_the_next_session(st, tmp_path):
    assert st.estimated_seconds("mobilefacenet", 400, {}) == float("inf")  # nothing measured: nothing fits
    _write(tmp_path, "sweep", "mobilefacenet", 0.0125, 0, 0.8, steps=400, resumed_from=0, cpu_s=800.0)
    _write(tmp_path, "sweep", "drconv_mobilefacenet", 0.0125, 0, 0.8, steps=400, resumed_from=200, cpu_s=1200.0)
    rates = st.cpu_per_step(tmp_path)
    assert rates == {"mobilefacenet": 2.0, "drconv_mobilefacenet": 6.0}
    assert st.estimated_seconds("mobilefacenet", 1200, rates) == pytest.approx(2.0 * 1200 * 1.3)
    assert st.estimated_seconds("drconv_mobilefacenet@paper", 400, rates) == pytest.approx(6.0 * 400 * 1.3)
    assert st.estimated_seconds("condconv_mobilefacenet", 10, rates) == pytest.approx(6.0 * 10 * 1.3)  # slowest
    now = time.mktime((2026, 12, 2, 13, 0, 0, 0, 0, -1))
    assert st.parse_until("15:30", now) - now == 2.5 * 3600
    assert st.parse_until("12:00", now) - now == 23 * 3600          # passed today: tomorrow
    assert st.parse_until(None) is None
    for bad in ("25:00", "1530", "ab:cd"):
        with pytest.raises(SystemExit, match="HH:MM"):
            st.parse_until(bad, now)


def test_checkpoint_step_is_the_latest_checkpoint(st, tmp_path):
    assert st.checkpoint_step(tmp_path) == 0
    for step in (50, 100, 1150):
        (tmp_path / f"ckpt_{step:08d}.pt").write_bytes(b"")
    (tmp_path / "ckpt_latest.pt").write_bytes(b"")
    assert st.checkpoint_step(tmp_path) == 1150


def _finals(out, drconv_rank1: float):
    """Sweep and aids done (plain 0.05, shipped DRConv at 0.025), the 6 comparison finals with DRConv's rank-1
    (its TAR at the plain model's)."""
    _sweep(out, {"drconv_mobilefacenet": 0.025, "mobilefacenet": 0.05})
    _write(out, "aids", "drconv_mobilefacenet", 0.025, 1, 0.95)
    for seed in range(2):
        _write(out, "aids", "drconv_mobilefacenet@paper", 0.025, seed, 0.5)
    for seed in range(3):
        _write(out, "final", "mobilefacenet", 0.05, seed, 0.80, rank1=0.80)
        _write(out, "final", "drconv_mobilefacenet", 0.025, seed, 0.80, rank1=drconv_rank1 + seed / 1000)


def test_the_change_runs_only_when_drconv_trails(st, tmp_path):
    import real_faces_report as rep
    ahead, behind = tmp_path / "ahead", tmp_path / "behind"
    _finals(ahead, 0.80)                             # level on TAR, ahead on rank-1: no change
    assert st.drconv_trails(st.load_stage(ahead, "final"), 0.05, 0.025, "drconv_mobilefacenet") is False
    assert not [r for r in st.plan(ahead) if "regionwd" in r[1]]
    _finals(behind, 0.78)
    final = st.load_stage(behind, "final")
    assert st.drconv_trails(final, 0.05, 0.025, "drconv_mobilefacenet") is True
    del final[st.run_name("mobilefacenet", 0.05, 2)]
    assert st.drconv_trails(final, 0.05, 0.025, "drconv_mobilefacenet") is None     # not all 6 runs done
    order = [(r[1], r[3]) for r in st.plan(behind) if r[0] == "final"][6:]
    assert order == [("local_mobilefacenet", 0), ("condconv_mobilefacenet", 0),
                     ("drconv_mobilefacenet@regionwd100", 0), ("drconv_mobilefacenet@basis", 0),
                     ("drconv_mobilefacenet@regionwd100", 1), ("drconv_mobilefacenet@regionwd100", 2)]
    assert st.change_name("drconv_mobilefacenet@paper") == "drconv_mobilefacenet@paper+regionwd100"
    for v, lr in (("local_mobilefacenet", 0.05), ("condconv_mobilefacenet", 0.05),
                  ("drconv_mobilefacenet@basis", 0.025)):
        _write(behind, "final", v, lr, 0, 0.7)
    assert not st._all_planned(behind)                       # the change's runs are part of the study now
    for seed in range(3):
        _write(behind, "final", "drconv_mobilefacenet@regionwd100", 0.025, seed, 0.80, rank1=0.81)
    assert st._all_planned(behind)
    text = rep.report(behind)
    assert "the one change: `drconv_mobilefacenet@regionwd100`" in text
    # rank-1 0.81 against DRConv's 0.780/0.781/0.782 and the plain 0.80, per seed
    assert "+3.00, +2.90, +2.80 | +2.90 ± 0.10" in text and "+1.00, +1.00, +1.00 | +1.00 ± 0.00" in text
    assert "| drconv_mobilefacenet@regionwd100 | 0.025 | 3 |" in rep.final_table(final | st.load_stage(behind, "final"))


def test_filter_parts_measure_each_region_against_the_shared_filter(st, tmp_path):
    import real_faces_report as rep
    import torch

    from facerec.models import create_model
    model = create_model("drconv_mobilefacenet", regions=4)
    gens = [m for m in model.modules() if type(m).__name__ == "PaperFilterGenerator"]
    with torch.no_grad():
        for g in gens:                      # region j's delta = (j + 1) x shared, V = 0: mean ratio 2.5, max 2.5
            o, c = g.shared.shape[:2]
            g.expand.bias.copy_(torch.cat([(j + 1) * g.shared.reshape(-1) for j in range(4)]))
            g.expand.weight.zero_()
        gens[0].expand.weight.fill_(1.0)
    parts = rep.filter_parts(model.state_dict())
    assert parts["layers"] == len(gens)
    assert parts["delta_mean"] == pytest.approx(2.5) and parts["delta_max"] == pytest.approx(2.5)
    v = (gens[0].expand.weight.numel() // 4) ** 0.5 / float(gens[0].shared.detach().norm())
    assert parts["dynamic_max"] == pytest.approx(v, rel=1e-5) and parts["dynamic_mean"] == pytest.approx(
        v / len(gens), rel=1e-5)
    assert rep.filter_parts(create_model("mobilefacenet").state_dict()) == {}
    run = tmp_path / "final" / "drconv_mobilefacenet_lr0.0125_s0"
    run.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, run / "ckpt_00000040.pt")
    assert "| drconv_mobilefacenet_lr0.0125_s0 | 40 | " in rep.filter_parts_table(tmp_path)
