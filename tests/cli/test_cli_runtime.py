"""facerec.cli._runtime: the console scripts' process set-up (OpenMP wait policy, glibc malloc)."""
import subprocess
import sys

import pytest

from facerec.cli import _runtime


def _run(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_malloc_is_tuned_unless_the_user_set_it():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    code = "from facerec.cli._runtime import _tune_glibc_malloc; print(_tune_glibc_malloc())"
    base = {"PATH": "/usr/bin:/bin"}
    assert _run(code, base) == "True"
    assert _run(code, {**base, "MALLOC_MMAP_MAX_": "65536"}) == "False"        # the user's setting wins
    assert _run(code, {**base, "MALLOC_TRIM_THRESHOLD_": "1000"}) == "False"


def test_prepare_process_keeps_a_user_omp_policy(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    _runtime.prepare_process()
    import os
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    code = "import os; from facerec.cli._runtime import prepare_process; prepare_process(); " \
           "print(os.environ['OMP_WAIT_POLICY'])"
    assert _run(code, {"PATH": "/usr/bin:/bin"}) == "PASSIVE"


@pytest.mark.parametrize("name", ["train", "megaface", "verify", "masks", "demo"])
def test_heavy_commands_prepare_the_process_first(name):
    import inspect
    import importlib
    main = importlib.import_module(f"facerec.cli.{name}").main
    body = inspect.getsource(main).split("\n")
    first = next(line.strip() for line in body[1:] if line.strip() and not line.strip().startswith(("#", '"')))
    assert first == "prepare_process()"
