"""train(cfg) with tiny stand-ins: run folder contents, in-process resume equivalence, NaN guard, AMP, CLI."""
import json
import math

import pytest
import torch
import yaml

import train_face
import train_standins as S
from facerec.config import load_config
from facerec.train.checkpoint import list_checkpoints, load_checkpoint
from facerec.train.loop import NonFiniteLossError, train


@pytest.fixture
def standins(monkeypatch):
    S.install(monkeypatch)
    return monkeypatch


def _equal_states(a, b, where="state"):
    """Exact equality of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _equal_states(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_run_writes_config_log_metrics_and_last_k_checkpoints(standins, tmp_path):
    summary = train(S.tiny_config(tmp_path))
    assert summary["step"] == 6 and not summary["interrupted"]
    assert summary["checkpoint"].endswith("ckpt_00000006.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000004.pt", "ckpt_00000006.pt"]
    assert {"tiny_acc", "tiny_acc_std", "tiny_acc_noflip", "tiny_threshold"} <= set(summary["metrics"])
    assert 0.0 <= summary["metrics"]["tiny_acc"] <= 1.0
    assert not summary["backbone"].training
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert stored["schedule"]["total_steps"] == 6 and stored["model"]["input_size"] == [16, 16]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in lines if "tiny_acc" in r] == [3, 6]
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in lines if "loss" in r)
    assert "step 6/6" in (tmp_path / "train.log").read_text()
    state = load_checkpoint(tmp_path / "ckpt_00000006.pt")
    assert state["config"] == stored and state["step"] == 6
    assert {"model", "head", "optimizer", "scaler", "sampler", "rng"} <= set(state)
    assert state["sampler"] == {"epoch": 1, "batch": 0, "global_batch": 8}  # 48 samples = 6 batches


def test_resume_auto_reproduces_the_uninterrupted_run(standins, tmp_path):
    train(S.tiny_config(tmp_path))
    final = load_checkpoint(tmp_path / "ckpt_00000006.pt")
    (tmp_path / "ckpt_00000006.pt").unlink()  # as if the run had died after step 4
    summary = train(S.tiny_config(tmp_path, train={"resume": "auto"}))
    assert summary["step"] == 6
    again = load_checkpoint(tmp_path / "ckpt_00000006.pt")
    for key in ("model", "head", "optimizer", "rng"):
        _equal_states({key: final[key]}, {key: again[key]})


def test_resume_refuses_a_different_model(standins, tmp_path):
    train(S.tiny_config(tmp_path, schedule={"total_steps": 2}))
    with pytest.raises(ValueError, match=r"model section differs: model\.embedding_size: 8 -> 4"):
        train(S.tiny_config(tmp_path, train={"resume": "auto"}, model={"embedding_size": 4}))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path):
    class LateNan(S.TinyDataset):
        def __getitem__(self, i):
            self.calls += 1
            x, y = super().__getitem__(i)
            return (x * float("nan") if self.calls > 3 * 8 else x), y

    S.install(monkeypatch, dataset_cls=LateNan)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 .*ckpt_00000002\.pt"):
        train(S.tiny_config(tmp_path))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000002.pt"]
    state = load_checkpoint(tmp_path / "ckpt_00000002.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_modes_train_on_cpu(standins, tmp_path, amp):
    summary = train(S.tiny_config(tmp_path, train={"amp": amp}, schedule={"total_steps": 2},
                                  eval={"sets": []}))
    state = load_checkpoint(summary["checkpoint"])
    assert state["step"] == 2
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
    assert ("scale" in state["scaler"]) == (amp == "fp16")


def test_grad_clip_and_warmup_run(standins, tmp_path):
    summary = train(S.tiny_config(tmp_path, optim={"grad_clip": 1.0}, schedule={"warmup_steps": 3},
                                  eval={"sets": []}))
    assert summary["step"] == 6 and summary["metrics"] == {}


def test_cli_runs_and_reports(standins, tmp_path, capsys):
    cfg_path = tmp_path / "cli.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"name": "tiny", "input_size": [16, 16], "embedding_size": 8},
                                        "data": {"path": str(tmp_path), "batch_size": 8, "num_workers": 0},
                                        "schedule": {"total_steps": 2, "milestones": [1]},
                                        "eval": {"sets": ["tiny.bin"], "nfolds": 2},
                                        "train": {"tensorboard": False}}))
    out = tmp_path / "run"
    assert train_face.main(["--config", str(cfg_path), "--out", str(out), "--set", "optim.lr=0.01"]) == 0
    printed = capsys.readouterr().out
    assert "done: step 2" in printed and "tiny_acc" in printed
    assert load_config(out / "config.yaml").optim.lr == 0.01
    with pytest.raises(SystemExit) as exc:
        train_face.main(["--config", str(cfg_path), "--set", "optim.lr=fast"])
    assert exc.value.code == 2
    assert "optim.lr: expected float" in capsys.readouterr().err


def test_evaluators_run_at_eval_steps_on_the_eval_mode_backbone(standins, tmp_path):
    seen = []

    def probe(backbone):
        seen.append((backbone.training, torch.is_grad_enabled()))
        return {"score": float(len(seen))}

    summary = train(S.tiny_config(tmp_path), evaluators={"held": probe})
    assert seen == [(False, False), (False, False)]                       # eval steps 3 and 6, eval mode, no grad
    assert summary["metrics"]["held_score"] == 2.0 and "tiny_acc" in summary["metrics"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["held_score"]) for r in lines if "held_score" in r] == [(3, 1.0), (6, 2.0)]
