"""The region-convolution operator (facerec/nn/ops.py) and the path choice (facerec/nn/paths.py): every CPU
implementation against float64 references (forward and every gradient, the guide's by Eq.7-8), torch.library
opcheck, torch.compile (fullgraph) and torch.export of DRConv models, select_path's rules, every path by name, and
the settings module (facerec/nn/settings.py)."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from facerec.nn import DRConv2d, ops, paths, settings
from facerec.nn.kernels import fused_cpu
from facerec.nn.paths import LayerFacts, select_path
from nn_reference import reference_region_conv

FUSED = fused_cpu.built()
needs_fused = pytest.mark.skipif(not FUSED, reason="the fused DRConv kernel is not built here")


def _case(generator, stride, empty=True, batch=2, channels=8, out_channels=12, height=7, width=6, regions=4,
          seed=0):
    """float64 (x, guide, coef, kernels): the paper generator's structure (coef [1, s], kernels (m, 1+t, O, C)) or
    the basis generator's (kernels (1, r, O, C) shared by all regions); region sizes ragged (region 0 favoured)
    and, with ``empty``, the last region never picked."""
    gen = torch.Generator().manual_seed(seed)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    x = torch.randn(batch, channels, height, width, dtype=torch.float64, generator=gen)
    guide = torch.randn(batch, regions, out_h, out_w, dtype=torch.float64, generator=gen)
    guide[:, 0] += 0.7
    if empty:
        guide[:, -1] -= 10.0
    if generator == "paper":
        coef = torch.rand(batch, regions, 2, dtype=torch.float64, generator=gen)
        coef[..., 0] = 1.0
        kernels = torch.randn(regions, 2, out_channels, channels, dtype=torch.float64, generator=gen)
    else:
        coef = torch.rand(batch, regions, 3, dtype=torch.float64, generator=gen)
        kernels = torch.randn(1, 3, out_channels, channels, dtype=torch.float64, generator=gen)
    return x, guide, coef, kernels


def _reference(x, guide, coef, kernels, stride):
    """float64 loop reference on the materialised filters (value, hard-mask gradients, Eq.7-8 for the guide)."""
    filters = torch.einsum("bjt,jtoc->bjoc", coef, kernels.expand(guide.shape[1], -1, -1, -1))
    return reference_region_conv(x, filters[..., None, None], guide, stride)


def _check(impl, generator, stride, dtype, tol):
    inputs64 = [t.requires_grad_() for t in _case(generator, stride)]
    want = _reference(*inputs64, stride)
    grad_out = torch.randn_like(want)
    wants = torch.autograd.grad(want, inputs64, grad_out)
    inputs = [t.detach().to(dtype).requires_grad_() for t in inputs64]
    got = ops.region_conv(*inputs, stride, impl=impl)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    for name, g, w in zip(("x", "guide", "coef", "kernels"), torch.autograd.grad(got, inputs, grad_out.to(dtype)),
                          wants):
        scale = max(w.abs().max().item(), 1.0)
        torch.testing.assert_close(g.double() / scale, w / scale, rtol=tol, atol=tol, msg=f"gradient of {name}")
        assert w.abs().max() > 0, name


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("generator", ["paper", "basis"])
@pytest.mark.parametrize("impl", ["structured", "gather", "dense_mix", "auto"])
def test_composite_impls_match_float64_reference(impl, generator, stride):
    if impl == "dense_mix" and generator == "paper":
        pytest.skip("dense_mix needs kernels shared by all regions")
    _check(impl, generator, stride, torch.float64, 1e-10)


@needs_fused
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("generator", ["paper", "basis"])
@pytest.mark.parametrize("in_kernel", [True, False])
def test_fused_impl_matches_float64_reference(generator, stride, in_kernel, monkeypatch):
    monkeypatch.setattr(paths, "FILTER_GRAD_IN_KERNEL_MIN_PIXELS_PER_REGION", 0 if in_kernel else 10 ** 9)
    _check("fused", generator, stride, torch.float32, 1e-4)


def test_empty_and_single_region_cases():
    """Regions that no pixel picks get zero kernel gradients; m = 1 gives a plain 1x1 conv."""
    x, guide, coef, kernels = (t.requires_grad_() for t in _case("paper", 1))
    y = ops.region_conv(x, guide, coef, kernels, impl="structured")
    y.square().sum().backward()
    assert kernels.grad[-1].abs().max() == 0 and kernels.grad[0].abs().max() > 0
    x1 = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    k1 = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    y1 = ops.region_conv(x1, torch.zeros(2, 1, 5, 5, dtype=torch.float64), torch.ones(2, 1, 1, dtype=torch.float64),
                         k1, impl="gather")
    torch.testing.assert_close(y1, nn.functional.conv2d(x1, k1[0, 0, :, :, None, None]), rtol=1e-12, atol=1e-12)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("impl", ["structured", "gather", "dense_mix", "auto", "fused"])
def test_opcheck(impl, stride):
    if impl == "fused" and not FUSED:
        pytest.skip("the fused DRConv kernel is not built here")
    x, guide, coef, kernels = (t.float() for t in _case("basis", stride))
    _opcheck(torch.ops.facerec.region_conv.default,
             ([t.clone().requires_grad_() for t in (x, guide, coef, kernels)] + [[stride, stride], impl]))
    grad_out = torch.randn(x.shape[0], kernels.shape[2], *guide.shape[2:])
    for needs in ([True] * 4, [False, True, False, True]):
        _opcheck(torch.ops.facerec.region_conv_backward.default,
                 (grad_out, x, guide, coef, kernels, [stride, stride], impl, needs))


def test_region_conv_argument_errors():
    x, guide, coef, kernels = _case("paper", 1)
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        ops.region_conv(x, guide, coef, kernels, impl="fast")
    with pytest.raises(ValueError, match="shapes do not fit"):
        ops.region_conv(x, guide[:, :, :3], coef, kernels)
    with pytest.raises(ValueError, match="no operator implementation"):
        ops.impl_for_path("all_regions")


# --- select_path and every path by name --------------------------------------------------------------------------

def _facts(generator="paper", pointwise=True, regions=8, bases=4, in_channels=64, out_channels=128):
    return LayerFacts(generator, pointwise, regions, bases if generator == "basis" else 0, in_channels, out_channels)


@pytest.mark.parametrize("generator,pointwise,pixels,dtype,grad,want", [
    ("paper", True, 56 * 56, torch.float32, True, "fused"),
    ("paper", True, 7 * 7, torch.float32, False, "fused"),
    ("basis", True, 7 * 7, torch.float32, False, "dense_pointwise"),      # < 2*r*m pixels: the dense form
    ("basis", True, 8 * 8, torch.float32, False, "fused"),                # 64 = 2*r*m
    ("basis", True, 14 * 14, torch.float32, True, "dense_pointwise"),     # training: < 64*m pixels
    ("basis", True, 28 * 28, torch.float32, True, "fused"),
    ("paper", True, 14 * 14, torch.float64, True, "structured"),          # float64: never fused
    ("paper", True, 15 * 15, torch.float64, True, "gather"),
    ("paper", False, 7 * 7, torch.float64, True, "gather"),               # k x k: gather
    ("basis", True, 56 * 56, torch.float64, True, "dense_pointwise"),     # grad and r <= 3m/4
    ("basis", True, 56 * 56, torch.float64, False, "gather"),             # inference: the gathered forward
    ("basis", False, 14 * 14, torch.float64, False, "dense_mix"),         # k x k: the output-side form
])
def test_select_path_rules(generator, pointwise, pixels, dtype, grad, want):
    if want == "fused" and not FUSED:
        pytest.skip("the fused DRConv kernel is not built here")
    x = torch.zeros(1, 64, 1, 1, dtype=dtype)
    assert select_path(_facts(generator, pointwise), x, pixels, grad=grad, compiling=False) == want


def test_select_path_switches_and_compiling():
    x = torch.zeros(1, 64, 1, 1)
    facts = _facts()
    with settings.override(fused=False):
        assert select_path(facts, x, 49, grad=True, compiling=False) == "structured"
    with settings.override(fused_train=False):
        assert select_path(facts, x, 49, grad=True, compiling=False) == "structured"
        assert select_path(facts, x, 49, grad=False, compiling=False) == ("fused" if FUSED else "structured")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert select_path(facts, x, 49, grad=True, compiling=False) == "structured"
    assert select_path(_facts(pointwise=False), x.double(), 49, grad=True, compiling=True) == "all_regions"
    assert select_path(facts, x, 49, requested="gather") == "gather"
    with pytest.raises(ValueError, match="cannot run this layer"):
        paths.check_path(_facts(pointwise=False), "structured")
    with pytest.raises(ValueError, match="cannot run this layer"):
        paths.check_path(_facts(), "dense_mix")
    with pytest.raises(ValueError, match="unknown path 'fast'"):
        paths.check_path(_facts(), "fast")


def _valid_paths(layer):
    valid = []
    for path in paths.PATHS[1:]:
        try:
            paths.check_path(layer.facts, path)
        except ValueError:
            continue
        if path == "triton" or (path == "fused" and not FUSED):
            continue
        valid.append(path)
    return valid


@pytest.mark.parametrize("generator,kernel_size,stride", [("paper", 1, 1), ("paper", 1, 2), ("basis", 1, 1),
                                                          ("basis", 1, 2), ("paper", 3, 1), ("basis", 3, 2)])
def test_every_path_by_name_gives_the_same_result(generator, kernel_size, stride):
    torch.manual_seed(0)
    reference = DRConv2d(6, 10, kernel_size, stride, kernel_size // 2, regions=3, generator=generator,
                         init="spread", path="gather").double()
    x = torch.randn(2, 6, 7, 6, dtype=torch.float64, requires_grad=True)
    want = reference(x)
    grad_out = torch.randn_like(want)
    wants = torch.autograd.grad(want, [x, *reference.parameters()], grad_out)
    checked = []
    for path in _valid_paths(reference):
        dtype, tol = (torch.float32, 1e-4) if path == "fused" else (torch.float64, 1e-10)
        layer = DRConv2d(6, 10, kernel_size, stride, kernel_size // 2, regions=3, generator=generator, path=path)
        layer.load_state_dict(reference.state_dict())
        layer.to(dtype)
        xx = x.detach().to(dtype).requires_grad_()
        got = layer(xx)
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=path)
        for g, w in zip(torch.autograd.grad(got, [xx, *layer.parameters()], grad_out.to(dtype)), wants):
            scale = max(w.abs().max().item(), 1.0)
            torch.testing.assert_close(g.double() / scale, w / scale, rtol=tol, atol=tol, msg=path)
        checked.append(path)
    assert {"gather", "all_regions"} <= set(checked)
    if kernel_size == 1:
        assert "structured" in checked


# --- torch.compile and torch.export -----------------------------------------------------------------------------

def _grads(model, x):
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().sum().backward()
    return [y.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_same(got, want, tol):
    assert len(got) == len(want)
    scale = max(w.abs().max().item() for w in want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g / scale, w / scale, rtol=tol, atol=tol)


def _ops_in_graph(model, x):
    """Compile with fullgraph=True, record the calls of the captured forward graph, return (grads, targets)."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    return _grads(torch.compile(model, fullgraph=True, backend=backend), x), targets


def test_compile_drconv_mobilefacenet_fullgraph_matches_eager():
    """The whole model compiles into one graph (the operator is opaque to the compiler) and matches eager. BN in
    eval mode: a batch of 2 through train-mode BN amplifies float rounding into the gradients."""
    from facerec.models import create_model
    torch.manual_seed(0)
    model = create_model("drconv_mobilefacenet", input_size=(112, 96), regions=2, init="spread").eval()
    x = torch.randn(2, 3, 112, 96)
    want = _grads(model, x)
    got, targets = _ops_in_graph(model, x)
    assert sum("facerec.region_conv" in t for t in targets) == 30
    _assert_same(got, want, 1e-5)


def _small_stack():
    torch.manual_seed(0)
    return nn.Sequential(DRConv2d(8, 16, 1, regions=2, init="spread"), nn.BatchNorm2d(16),
                         DRConv2d(16, 12, 1, stride=2, regions=2, generator="basis", num_bases=3, init="spread"),
                         DRConv2d(12, 8, 3, padding=1, regions=2, init="spread")).eval()


@pytest.mark.parametrize("fused", [True, False])
def test_compile_aot_autograd_traces_the_backward_operator(fused):
    """aot_eager traces forward and backward: the backward is the registered formula around
    facerec::region_conv_backward; with the fused kernels off, the composite implementations run inside it."""
    model, x = _small_stack(), torch.randn(2, 8, 9, 10)
    with settings.override(fused=fused):
        want = _grads(model, x)
        torch._dynamo.reset()
        got = _grads(torch.compile(model, fullgraph=True, backend="aot_eager"), x)
    _assert_same(got, want, 1e-5)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    """The default backend (Inductor generates and compiles C++ around the two opaque operators): about 46 s on the
    2-core VM with a cold compile cache, seconds with a warm one."""
    model, x = _small_stack(), torch.randn(2, 8, 9, 10)
    want = _grads(model, x)
    torch._dynamo.reset()
    _assert_same(_grads(torch.compile(model, fullgraph=True), x), want, 1e-4)


def test_export_keeps_the_operator_and_matches():
    """torch.export: 1x1 layers become facerec::region_conv calls with impl "auto" (the exported program picks its
    kernel where it runs), a 3x3 layer the all_regions form; outputs equal the eager layers'."""
    model, x = _small_stack(), torch.randn(2, 8, 9, 10)
    with torch.no_grad():
        want = model(x)
        program = torch.export.export(model, (x,))
        calls = [n for n in program.graph.nodes if "facerec.region_conv" in str(n.target)]
        impls = [n.args[5] if len(n.args) > 5 else n.kwargs.get("impl", "auto") for n in calls]  # default dropped
        assert impls == ["auto", "auto"]
        torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)


# --- settings --------------------------------------------------------------------------------------------------

def test_settings_override_restores_and_validates():
    before = {name: settings.get(name) for name in settings.NAMES}
    with settings.override(fused=False, onednn=False, group_plan="padded"):
        assert not settings.use_fused() and not settings.use_onednn() and settings.group_plan() == "padded"
    assert {name: settings.get(name) for name in settings.NAMES} == before
    with pytest.raises(RuntimeError, match="inside"):
        with settings.override(triton=False):
            raise RuntimeError("inside")
    assert settings.use_triton() == before["triton"]
    previous = settings.update(fused_train=False)
    try:
        assert previous == {"fused_train": before["fused_train"]} and not settings.use_fused_train()
    finally:
        settings.update(**previous)
    with pytest.raises(ValueError, match="unknown facerec.nn setting 'fast'"):
        settings.override(fast=True).__enter__()
    with pytest.raises(TypeError, match="takes a bool"):
        settings.set_fused("no")
    with pytest.raises(ValueError, match="group_plan must be one of"):
        settings.set_group_plan("fast")
    with pytest.raises(ValueError):                               # all checked before anything changes
        settings.update(fused=not before["fused"], group_plan="fast")
    assert settings.use_fused() == before["fused"]


def test_settings_defaults_come_from_the_environment_once():
    env = dict(os.environ, FACEREC_FUSED="0", FACEREC_ONEDNN="0")
    code = ("import os; from facerec.nn import settings; os.environ['FACEREC_FUSED'] = '1'; "
            "print(settings.use_fused(), settings.use_onednn(), settings.use_fused_train())")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["False", "False", "True"]


@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_onednn_default_is_on_with_avx512_only(capability):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env["ATEN_CPU_CAPABILITY"] = capability        # torch reports what this asks for
    code = "import torch; from facerec.nn import settings; print(torch.backends.cpu.get_cpu_capability(), " \
           "settings.use_onednn(), settings.use_fused())"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=root).stdout.split()
    assert got[1:] == [str(got[0] == "AVX512"), "True"]
