"""The Triton kernels of the 1x1 region convolution (facerec/nn/kernels/triton_region.py) against float64 loop
references: forward (Eq.3-5 with the Eq.4 mask), grad_x, Eq.7 (directly and as the guide's Eq.8 gradient),
grad_coef and grad_kernels, for the paper generator (per-region kernels, T = 1 + t, coef[..., 0] = 1) and the
basis generator (kernels shared by all regions, T = r), strides 1 and 2, float32 and bfloat16, ragged and empty
regions, ties and NaN in the guide. Without a GPU the kernels run on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set here before triton is imported; if triton was imported earlier in the process, one test
reruns them in a fresh process) with 16-wide tiles, so every tile loop runs more than once at these tiny shapes;
a GPU runs the same tests on CUDA tensors, plus a no-host-sync / CUDA-graph check. One test compiles the kernels
for sm_80 and sm_90 (no GPU needed) to catch what the interpreter does not check."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

_CUDA = torch.cuda.is_available()
if not _CUDA and "triton" not in sys.modules:
    # Triton fixes interpreter mode when it is imported (and reads the variable again while interpreting), so it
    # is set before the first import and stays set.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]')")

import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from facerec.nn.functional import guided_mask, softmax_straight_through_grad  # noqa: E402
from facerec.nn.kernels import triton_region  # noqa: E402
from nn_reference import all_region_outputs, loop_forward, reference_region_conv  # noqa: E402

_INTERPRETED = isinstance(tl.sum, InterpretedFunction)
DEVICE = "cuda" if _CUDA else "cpu"
# No GPU, and triton was imported earlier in this process without the interpreter (by a module collected before
# this one): test_interpreter_in_subprocess runs the kernel tests in a fresh process instead.
_RERUN = not (_CUDA or _INTERPRETED)
_WITHOUT_KERNELS = {"test_interpreter_in_subprocess", "test_kernels_compile_for_gpus",
                    "test_module_imports_without_triton"}

# (atol, rtol) on values scaled by the reference's largest magnitude
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-2, 1e-2)}


@pytest.fixture(autouse=True)
def small_tiles(request, monkeypatch):
    """Interpreter: 16-wide tiles (tl.dot's minimum), so tiny shapes still run every loop more than once."""
    if _RERUN and request.node.originalname not in _WITHOUT_KERNELS:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set: test_interpreter_in_subprocess "
                    "runs this test")
    if not _CUDA:
        tiles = {kind: {key: (16 if key.startswith("BLOCK") else value) for key, value in spec.items()}
                 for kind, spec in triton_region.TILES.items()}
        monkeypatch.setattr(triton_region, "TILES", tiles)
        monkeypatch.setattr(triton_region, "FLOAT32_TILES", {})


def _case(generator, stride, batch=2, channels=8, out_channels=8, size=5, regions=3, terms=None, seed=0):
    """float64 (x, guide, coef, kernels), T = terms (default 2 = 1 + t for "paper", r = 3 for "basis"): the guide
    leaves the last region empty, has an all-equal pixel (region 0 wins) and a two-way tie at the maximum (the lower
    index wins); region sizes are otherwise random."""
    gen = torch.Generator().manual_seed(seed)
    out = (size - 1) // stride + 1
    x = torch.randn(batch, channels, size, size, dtype=torch.float64, generator=gen)
    guide = torch.randn(batch, regions, out, out, dtype=torch.float64, generator=gen)
    guide[:, -1] -= 100.0
    guide[0, :, 0, 0] = 0.5
    guide[1, :, 1, 2] = 0.0
    guide[1, 1:3, 1, 2] = 9.0
    shared = generator == "basis"
    terms = terms or (3 if shared else 2)
    coef = torch.rand(batch, regions, terms, dtype=torch.float64, generator=gen) + 0.5
    if not shared:
        coef[..., 0] = 1.0                                       # the paper generator's static term A_j
    kernels = torch.randn(1 if shared else regions, terms, out_channels, channels, dtype=torch.float64,
                          generator=gen) / channels ** 0.5
    return x, guide, coef, kernels


def _filters(coef, kernels):
    """(B, m, O, C, 1, 1): W_bj = sum_t coef[b, j, t] kernels[j or 0, t]."""
    full = kernels.expand(coef.shape[1], -1, -1, -1)
    return torch.einsum("bjt,jtoc->bjoc", coef, full)[..., None, None]


def _run_inputs(x, guide, coef, kernels, dtype):
    """The kernels' inputs on DEVICE: x and kernels in dtype, guide and coef in float32."""
    return (x.to(DEVICE, dtype), guide.to(DEVICE, torch.float32), coef.to(DEVICE, torch.float32),
            kernels.to(DEVICE, dtype))


def _as_reference(tensors):
    """The run inputs as the float64 CPU tensors the reference sees (bfloat16 rounding included)."""
    return [t.detach().cpu().double() for t in tensors]


def _assert_close(got, want, dtype, name):
    atol, rtol = TOLERANCES[dtype]
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.detach().cpu().double() / scale, want / scale, atol=atol, rtol=rtol,
                               msg=lambda text: f"{name}: {text}")


CASES = [(generator, stride, dtype) for generator in ("paper", "basis") for stride in (1, 2)
         for dtype in (torch.float32, torch.bfloat16)]


def _case_id(case):
    generator, stride, dtype = case
    return f"{generator}-stride{stride}-{str(dtype).split('.')[-1]}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_float64_loop(case):
    generator, stride, dtype = case
    run = _run_inputs(*_case(generator, stride), dtype)
    x, guide, coef, kernels = _as_reference(run)
    y = triton_region.region_conv_forward(*run, (stride, stride))
    assert y.shape == (2, 8, *guide.shape[2:]) and y.dtype == dtype
    assert y.permute(0, 2, 3, 1).is_contiguous()                 # channels_last strides
    _assert_close(y, loop_forward(x, _filters(coef, kernels), guide, stride), dtype, "forward")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backward_matches_float64(case):
    """grad_x, Eq.7 (directly, and as the guide gradient after Eq.8), grad_coef and grad_kernels against autograd
    through the float64 reference (hard mask, softmax straight-through for the guide)."""
    generator, stride, dtype = case
    run = _run_inputs(*_case(generator, stride, seed=1), dtype)
    ref = [t.requires_grad_() for t in _as_reference(run)]
    x, guide, coef, kernels = ref
    y = reference_region_conv(x, _filters(coef, kernels), guide, stride)
    grad_out = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grad_out = grad_out.to(dtype).double()
    want = torch.autograd.grad(y, ref, grad_out)
    grad_x, eq7, grad_coef, grad_kernels = triton_region.region_conv_backward(
        grad_out.to(DEVICE, dtype), *run, (stride, stride))
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert eq7.shape == guide.shape and eq7.dtype == torch.float32 and eq7.is_contiguous()
    assert grad_coef.shape == coef.shape and grad_kernels.shape == kernels.shape and grad_kernels.dtype == dtype
    outs = all_region_outputs(x.detach(), _filters(coef, kernels).detach(), stride, 0, 1)     # (B, m, O, Ho, Wo)
    _assert_close(eq7, torch.einsum("bohw,bjohw->bjhw", grad_out, outs), dtype, "eq7")
    grad_guide = softmax_straight_through_grad(guide.detach(), eq7.cpu().double())
    for name, got, expected in zip(("grad_x", "guide (Eq.7-8)", "grad_coef", "grad_kernels"),
                                   (grad_x, grad_guide, grad_coef, grad_kernels), want):
        _assert_close(got, expected, dtype, name)
    if stride > 1:
        skipped = torch.ones_like(grad_x, dtype=torch.bool)
        skipped[:, :, ::stride, ::stride] = False
        assert not grad_x[skipped].any()


def test_multiple_tiles_split_k_and_determinism(monkeypatch):
    """C and O over one 16-wide tile (two channel blocks, partial Eq.7 sums), a split of each bucket's tiles for the
    kernel gradient, every result bitwise equal between runs and between split counts."""
    run = _run_inputs(*_case("paper", 1, channels=20, out_channels=18, size=6, regions=4, terms=3, seed=3),
                      torch.float32)
    x, guide, coef, kernels = _as_reference(run)
    grad_out = torch.randn(2, 18, 6, 6, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    _assert_close(triton_region.region_conv_forward(*run, 1), loop_forward(x, _filters(coef, kernels), guide),
                  torch.float32, "forward")
    monkeypatch.setattr(triton_region, "SPLIT_K", 3)
    first = triton_region.region_conv_backward(grad_out, *run, 1)
    again = triton_region.region_conv_backward(grad_out, *run, 1)
    monkeypatch.setattr(triton_region, "SPLIT_K", 1)
    unsplit = triton_region.region_conv_backward(grad_out, *run, 1)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    torch.testing.assert_close(first[3], unsplit[3], rtol=1e-6, atol=1e-6)
    ref = [t.requires_grad_() for t in (x, guide, coef, kernels)]
    want = torch.autograd.grad(reference_region_conv(ref[0], _filters(ref[2], ref[3]), ref[1]), ref,
                               grad_out.cpu().double())
    _assert_close(first[0], want[0], torch.float32, "grad_x")
    _assert_close(first[2], want[2], torch.float32, "grad_coef")
    _assert_close(first[3], want[3], torch.float32, "grad_kernels")


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_needs_select_outputs(generator):
    run = _run_inputs(*_case(generator, 1, seed=5), torch.float32)
    grad_out = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    full = triton_region.region_conv_backward(grad_out, *run, 1)
    for which in range(4):
        needs = tuple(i == which for i in range(4))
        part = triton_region.region_conv_backward(grad_out, *run, 1, needs=needs)
        for i, value in enumerate(part):
            if i == which:
                torch.testing.assert_close(value, full[i], rtol=1e-6, atol=1e-6)
            else:
                assert value is None
    assert triton_region.region_conv_backward(grad_out, *run, 1, needs=(False,) * 4) == (None,) * 4


def test_mask_nan_ties_and_empty_region():
    """Region of a pixel as facerec.nn.functional.guided_mask: first maximum, NaN the largest; a region no pixel
    uses gets zero coefficient and kernel gradients (per-region kernels)."""
    x64, guide64, coef64, kernels64 = _case("paper", 1, seed=7)
    guide64[0, 1, 2, 3] = float("nan")
    guide64[1, 2, 4, 4] = float("nan")                           # the otherwise empty region 2: one NaN pixel
    run = _run_inputs(x64, guide64, coef64, kernels64, torch.float32)
    x, guide, coef, kernels = _as_reference(run)
    mask = guided_mask(guide)
    assert mask[0, 0, 0] == 0 and mask[1, 1, 2] == 1 and mask[0, 2, 3] == 1 and mask[1, 4, 4] == 2
    assert (mask == 2).sum() == 1
    y = triton_region.region_conv_forward(*run, 1)
    _assert_close(y, loop_forward(x, _filters(coef, kernels), guide), torch.float32, "forward")
    empty = _run_inputs(*_case("paper", 1, seed=7), torch.float32)
    grad_out = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    _, _, grad_coef, grad_kernels = triton_region.region_conv_backward(grad_out, *empty, 1)
    assert not grad_coef[:, 2].any() and not grad_kernels[2].any()
    assert grad_coef[:, :2].abs().min() > 0


def test_input_layouts_agree():
    """NCHW, channels_last (read in place, also through the stride-2 view) and non-contiguous inputs and gradients
    give the same results (channel-strided ones are copied to pixel rows first)."""
    run = _run_inputs(*_case("basis", 2, seed=9), torch.float32)
    x, guide, coef, kernels = run
    wide = torch.zeros(2, 8, 5, 10, device=DEVICE)
    wide[..., ::2] = x                                           # x as a view with column stride 2
    grad_out = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    results = []
    channels_last = (x.contiguous(memory_format=torch.channels_last),
                     grad_out.contiguous(memory_format=torch.channels_last))
    transposed = grad_out.transpose(2, 3).contiguous().transpose(2, 3)
    for xi, gi in ((x, grad_out), channels_last, (wide[..., ::2], transposed)):
        y = triton_region.region_conv_forward(xi, guide, coef, kernels, 2)
        results.append((y, *triton_region.region_conv_backward(gi, xi, guide, coef, kernels, 2)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_cuda_no_host_sync_and_graph_capture(generator):
    """On a GPU: no call synchronises with the host (sync debug mode "error"), and forward + backward captured in
    a CUDA graph replay to the eager results for new inputs copied into the captured buffers."""
    run = _run_inputs(*_case(generator, 2, batch=4, channels=64, out_channels=96, size=14, regions=8, terms=3),
                      torch.bfloat16)
    grad_out = torch.randn(4, 96, 7, 7, device=DEVICE, dtype=torch.bfloat16)

    def step():
        return (triton_region.region_conv_forward(*run, 2), *triton_region.region_conv_backward(grad_out, *run, 2))

    step()                                                       # compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    fresh = _run_inputs(*_case(generator, 2, batch=4, channels=64, out_channels=96, size=14, regions=8, terms=3,
                               seed=11), torch.bfloat16)
    for buffer, value in zip(run, fresh):
        buffer.copy_(value)
    graph.replay()
    for got, want in zip(captured, step()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_inputs_raise():
    x, guide, coef, kernels = _run_inputs(*_case("paper", 1), torch.float32)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        triton_region.region_conv_forward(x, guide[:, :2], coef, kernels, 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        triton_region.region_conv_forward(x, guide, coef, kernels[:2], 1)
    with pytest.raises(ValueError, match="stride"):
        triton_region.region_conv_forward(x, guide, coef, kernels, 0)
    with pytest.raises(TypeError, match="float32"):
        triton_region.region_conv_forward(x.double(), guide, coef, kernels, 1)
    with pytest.raises(ValueError, match="grad_out"):
        triton_region.region_conv_backward(torch.zeros(1, device=DEVICE), x, guide, coef, kernels, 1)


def test_module_imports_without_triton():
    """Without triton the module imports, available() is False and a call says what is missing."""
    code = ("import sys; sys.modules['triton'] = None; import torch; import facerec.nn.kernels.triton_region as t; "
            "assert not t.available()\n"
            "try:\n    t.region_conv_forward(*(torch.zeros(1, 2, 3, 3),) * 2, torch.zeros(1, 2, 1), "
            "torch.zeros(2, 1, 4, 2), 1)\n"
            "except RuntimeError as e:\n    assert 'need triton' in str(e)\nelse:\n    raise AssertionError")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert triton_region.available()


@pytest.mark.skipif(not _RERUN, reason="the kernel tests ran in this process")
def test_interpreter_in_subprocess():
    """The kernel tests of this file in a fresh process with TRITON_INTERPRET=1 (see _RERUN)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                           " and ".join(f"not {name}" for name in sorted(_WITHOUT_KERNELS))],
                          env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout[-6000:]


_COMPILE = textwrap.dedent("""
    import sys, types, torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from facerec.nn.kernels import triton_region as tr, _triton_region_jit as jit

    launches = []
    class Record:
        def __init__(self, name):
            self.name = name
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.name, args, kw))
    tr._jit = lambda device: types.SimpleNamespace(**{n: Record(n) for n in dir(jit) if n.endswith("_kernel")})
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int64: "i64"}
    for dtype, shared in ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)):
        x = torch.randn(4, 96, 9, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
        args = (x, torch.randn(4, 8, 9, 9), torch.rand(4, 8, 2), torch.randn(1 if shared else 8, 2, 80, 96))
        tr.region_conv_forward(*args, 1)
        dy = torch.randn(4, 80, 9, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
        tr.region_conv_backward(dy, *args, 1)
    seen = set()
    for capability in map(int, sys.argv[1:]):
        for name, args, kw in launches:
            fn, constexprs, options = getattr(jit, name), dict(kw), {}
            for key in ("num_warps", "num_stages"):
                if key in constexprs:
                    options[key] = constexprs.pop(key)
            signature, attrs = {}, {}
            for i, (arg_name, value) in enumerate(zip(fn.arg_names, args)):
                if isinstance(value, torch.Tensor):
                    signature[arg_name] = "*" + names[value.dtype]
                    attrs[(i,)] = [["tt.divisibility", 16]]
                elif value == 1:                                   # what a launch specializes
                    signature[arg_name], constexprs[arg_name] = "constexpr", 1
                else:
                    signature[arg_name] = "i32"
            signature.update({key: "constexpr" for key in kw if key not in options})
            key = (capability, name, str(signature), str(sorted(constexprs.items())))
            if key not in seen:
                seen.add(key)
                source = ASTSource(fn, signature, constexprs, attrs)
                assert triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options).asm["cubin"]
    print(len(seen))
""")


def test_kernels_compile_for_gpus(tmp_path):
    """Every kernel variant (per-region and shared kernels, bfloat16 and float32) compiles to a cubin for
    compute capability 8.0 and 9.0 (Triton's own compiler, no GPU needed; the launch path and Hopper-only
    features are not involved)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", _COMPILE, "80", "90"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) == 2 * 10            # (4 + 3 + 3 signatures) x 2 targets
