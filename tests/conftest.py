"""Shared test fixtures: thread count, the optional real data in ../shared/data, scripts of the checkout loaded
as modules (benchmarks/, the top-level CLIs), and a disk that fills up."""
import builtins
import errno
import importlib.util
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
if not torch.cuda.is_available():
    # The Triton kernels run under Triton's interpreter on CPU tensors; triton reads this once, at its import (the
    # first custom-op call imports torch._dynamo, which imports triton), so it is set before any test runs.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data (small real face files); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (it sits beside the checkout)")
    return SHARED_DATA


_SCRIPTS: dict = {}


@pytest.fixture(scope="session")
def load_script():
    """``load_script("benchmarks/real_faces.py")`` -> that file imported as a module (once per session): the
    benchmark scripts and ``train_face.py`` / ``eval_megaface.py`` / ``visualize_masks.py`` are not packages."""
    def load(relative_path: str):
        if relative_path not in _SCRIPTS:
            path = ROOT / relative_path
            name = "script_" + path.with_suffix("").as_posix().replace("/", "_")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _SCRIPTS[relative_path] = module
        return _SCRIPTS[relative_path]
    return load


class FullDisk:
    """Stand-in for ``open`` on a disk with ``capacity`` bytes free, shared by every file it opens: a write that
    does not fit lands in part, then fails with ENOSPC; reads pass through. Patch it in as a module's ``open``."""

    def __init__(self, capacity: int):
        self.left = capacity

    def __call__(self, path, mode="r", *args, **kw):
        f = builtins.open(path, mode, *args, **kw)
        return f if "w" not in mode else _FillingFile(f, self)


class _FillingFile:
    def __init__(self, f, disk: FullDisk):
        self._f, self._disk = f, disk

    def write(self, data):
        data = bytes(data)
        if len(data) > self._disk.left:
            self._f.write(data[:self._disk.left])
            self._disk.left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._disk.left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk():
    """``full_disk(capacity)`` -> a :class:`FullDisk`, e.g. ``monkeypatch.setattr(mod, "open", full_disk(300),
    raising=False)``."""
    return FullDisk


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="tests/fuzz: many thousand mutated inputs per reader instead of the CI few hundred")
