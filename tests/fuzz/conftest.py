"""Fuzz suite settings: a few hundred inputs per reader by default (derandomised, so CI is repeatable),
``--fuzz-long`` for many thousands with fresh randomness; a per-reader tally printed at the end and written
to ``$FACEREC_FUZZ_REPORT`` (JSON) when that variable is set."""
import json
import os

import pytest
from fuzzkit import TALLY
from hypothesis import HealthCheck, Phase, settings

CI_EXAMPLES = 200
LONG_EXAMPLES = 5000


@pytest.fixture(autouse=True)
def small_image_limit(monkeypatch):
    """Images may legitimately decode to MAX_IMAGE_PIXELS (67M pixels, 200 MB); under fuzzing the limit is
    1M pixels so the 64 MiB bound of fuzzkit checks that nothing allocates beyond what a header declares."""
    from facerec.data import codec

    monkeypatch.setattr(codec, "MAX_IMAGE_PIXELS", 1 << 20)


@pytest.fixture
def fuzz_settings(request):
    """``fuzz_settings(scale=1.0, shrink=True)`` -> hypothesis settings for one reader (``scale`` < 1 for slow
    readers; ``shrink=False`` where a failure is expected and its smallest form is not needed)."""
    long = request.config.getoption("--fuzz-long")

    def make(scale: float = 1.0, shrink: bool = True):
        n = max(20, int((LONG_EXAMPLES if long else CI_EXAMPLES) * scale))
        phases = [p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)]
        return settings(max_examples=n, deadline=None, database=None, derandomize=not long, phases=phases,
                        suppress_health_check=list(HealthCheck), print_blob=True)

    return make


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    terminalreporter.section("reader fuzzing: inputs that kept the contract")
    for reader, (survived, returned, seconds) in sorted(TALLY.items()):
        terminalreporter.write_line(f"{reader:<22} {survived:>6} inputs  ({returned} read, {survived - returned} "
                                    f"refused with the documented error)  {seconds:6.1f} s in the reader")
    report = os.environ.get("FACEREC_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({r: {"survived": s, "returned": k, "refused": s - k, "seconds": round(t, 2)}
                       for r, (s, k, t) in sorted(TALLY.items())}, f, indent=1)
