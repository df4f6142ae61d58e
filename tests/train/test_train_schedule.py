"""lr_at: the paper's multistep schedule at its boundaries, warm-up, bad steps."""
import pytest

from facerec.config import OptimConfig, ScheduleConfig
from facerec.train.schedule import lr_at

PAPER = ScheduleConfig()  # 252k / 364k / 406k, stop 420k
OPTIM = OptimConfig()  # lr 0.1


@pytest.mark.parametrize("step, expected", [
    (0, 0.1), (251_999, 0.1), (252_000, 0.01), (363_999, 0.01), (364_000, 0.001),
    (405_999, 0.001), (406_000, 0.0001), (419_999, 0.0001),
])
def test_paper_schedule_boundaries(step, expected):
    assert lr_at(step, PAPER, OPTIM) == pytest.approx(expected, rel=1e-12)


def test_linear_warmup_then_milestones():
    sched = ScheduleConfig(total_steps=100, milestones=(50,), warmup_steps=10)
    assert lr_at(0, sched, OPTIM) == pytest.approx(0.01)
    assert lr_at(4, sched, OPTIM) == pytest.approx(0.05)
    assert lr_at(9, sched, OPTIM) == pytest.approx(0.1)
    assert lr_at(10, sched, OPTIM) == pytest.approx(0.1)
    assert lr_at(50, sched, OPTIM) == pytest.approx(0.01)


def test_pure_function_of_step():
    steps = [410_000, 0, 300_000, 0, 410_000]
    forward = [lr_at(s, PAPER, OPTIM) for s in steps]
    assert forward == [lr_at(s, PAPER, OPTIM) for s in reversed(steps)][::-1]
    assert forward[0] == forward[-1] and forward[1] == forward[3] == 0.1


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_step(bad):
    with pytest.raises(ValueError, match="non-negative int"):
        lr_at(bad, PAPER, OPTIM)


def test_lr_batch_scales_the_peak_by_the_linear_rule():
    scaled = OptimConfig(lr=0.1, lr_batch=512)
    sched = ScheduleConfig(total_steps=100, milestones=(60,), warmup_steps=10)
    assert lr_at(20, sched, scaled, 64) == pytest.approx(0.0125)
    assert lr_at(60, sched, scaled, 128) == pytest.approx(0.0025)
    assert lr_at(4, sched, scaled, 512) == pytest.approx(0.05)                     # warm-up of the unscaled peak
    assert lr_at(20, sched, scaled) == pytest.approx(0.1)                          # no batch given: as configured
    assert lr_at(20, sched, OptimConfig(lr=0.1), 64) == pytest.approx(0.1)               # lr_batch 0: no scaling
    with pytest.raises(ValueError, match="optim.lr_batch"):
        OptimConfig(lr_batch=-1)
