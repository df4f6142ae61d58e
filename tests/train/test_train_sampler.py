"""ResumableBatchSampler and DistInfo: rank slices, world-size independence, resume position."""
import pytest

from facerec.train.distributed import DistInfo, ResumableBatchSampler


def _epoch(sampler, epoch, batch=0):
    sampler.set_position(epoch, batch)
    return list(sampler)


def test_ranks_partition_each_global_batch():
    one = _epoch(ResumableBatchSampler(50, 12, seed=3), 0)
    ranks = [_epoch(ResumableBatchSampler(50, 12, rank=r, world_size=3, seed=3), 0) for r in range(3)]
    assert len(one) == 4 and all(len(b) == 12 for b in one)
    for k, global_batch in enumerate(one):
        assert sum((r[k] for r in ranks), []) == global_batch  # the same stream for any G
    flat = sum(one, [])
    assert len(set(flat)) == len(flat) == 48


def test_epochs_differ_and_repeat_with_seed():
    a = ResumableBatchSampler(40, 8, seed=1)
    assert _epoch(a, 0) != _epoch(a, 1)
    assert _epoch(a, 1) == _epoch(ResumableBatchSampler(40, 8, seed=1), 1)
    assert _epoch(a, 0) != _epoch(ResumableBatchSampler(40, 8, seed=2), 0)


def test_resume_position_continues_the_stream():
    s = ResumableBatchSampler(40, 8, seed=0)
    full = _epoch(s, 0) + _epoch(s, 1)
    epoch, batch = s.position_at(7)
    assert (epoch, batch) == (1, 2)
    assert _epoch(s, epoch, batch) == full[7:]
    assert len(s) == 3 and s.state_dict()["batch"] == 2


def test_errors():
    with pytest.raises(ValueError, match=r"batch_size=10 \(global\) is not divisible by .* 4"):
        ResumableBatchSampler(100, 10, world_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, 8)
    with pytest.raises(ValueError, match="outside"):
        ResumableBatchSampler(40, 8).set_position(0, 5)


def test_dist_info_from_env(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert DistInfo.from_env() == DistInfo(0, 0, 1) and not DistInfo.from_env().is_distributed
    monkeypatch.setenv("WORLD_SIZE", "4"), monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        DistInfo.from_env()
    monkeypatch.setenv("RANK", "3"), monkeypatch.setenv("LOCAL_RANK", "1")
    info = DistInfo.from_env()
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (3, 1, 4, False)
