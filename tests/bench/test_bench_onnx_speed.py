"""Tests of benchmarks/onnx_speed.py: the interleaved timing and the per-operator profile on a small export."""
import importlib.util
import warnings
from pathlib import Path

import pytest

from facerec.models import create_model
from facerec.models.export import export_onnx

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def speed():
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    spec = importlib.util.spec_from_file_location("onnx_speed", BENCH / "onnx_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_and_profile_a_small_export(speed, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(create_model("mobilefacenet", input_size=(112, 96)), tmp_path / "m.onnx")
    times = speed.time_models({"a": path, "b": path}, threads=1, batch=2, size=(112, 96), repeats=2, runs=1,
                              warmup=1)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    text = speed.profile(path, 1, 2, (112, 96), runs=2, top=3)
    assert text.startswith("m.onnx, 1 thread(s), batch 2") and "Conv: " in text and " nodes)" in text
    assert "PRelu" not in text and text.count(" ms (") == 3


def test_weights_read_counts_the_initializers(speed, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = export_onnx(create_model("mobilefacenet", input_size=(112, 96)), tmp_path / "s.onnx")
        large = export_onnx(create_model("drconv_mobilefacenet", input_size=(112, 96)), tmp_path / "l.onnx")
    want = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(large)).graph.initializer)
    text = speed.weights_read({"s": small, "l": large}, evict_mb=4, repeats=2)
    assert f"l {want / 1e6:.1f} MB;" in text and f"one read of {want / 1e6:.1f} MB at 1 thread: " in text
    assert want > sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(small)).graph.initializer)
    assert text.endswith("ms (numpy, median of 2)")
