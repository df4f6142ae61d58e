"""ONNX export: the export forms equal the layers and blocks (float64), the ONNX files match PyTorch in onnxruntime,
and the exported graph of a DRConv does a conv's work per kernel term instead of computing every region's output."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from facerec.models import Bottleneck, create_model
from facerec.models.export import (ExportCondConv2d, ExportDRConv2d, ExportPReLU, ExportRegionBottleneck,
                                   compare_onnx, export_onnx, exportable, near_tied_samples)
from facerec.nn import CondConv2d, DRConv2d, pointwise_factory

VARIANTS = [("mobilefacenet", {}), ("drconv_mobilefacenet", {}), ("drconv_mobilefacenet", {"generator": "basis"}),
            ("condconv_mobilefacenet", {}), ("local_mobilefacenet", {})]


def _randomize_norms(module: nn.Module, seed: int = 1) -> nn.Module:
    """BN statistics and affine parameters away from their init values, so that folding them is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=gen) * 0.2 - 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                if mod.affine:
                    mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                    mod.bias.copy_(torch.rand(mod.num_features, generator=gen) - 0.5)
    return module


def _leave_region_unused(guide: nn.Module, region: int) -> None:
    """Make region ``region`` lose every argmax: its guide BN subtracts a huge running mean."""
    with torch.no_grad():
        guide.norm.running_mean[region] = 1e4


def _layer(generator, kernel=1, stride=1, padding=0, hidden=None, **kw) -> DRConv2d:
    torch.manual_seed(0)
    extra = {"hidden_channels": hidden} if hidden else {}
    layer = DRConv2d(5, 7, kernel, stride, padding, dilation=1 if padding < 2 else 2, regions=4, init="spread",
                     generator=generator, bias=True, num_bases=2 if generator == "basis" else 4, **extra, **kw)
    nn.init.normal_(layer.bias)
    return _randomize_norms(layer).eval()


def _block(stride: int, in_channels: int = 6, out_channels: int = 6, generator: str = "paper") -> Bottleneck:
    torch.manual_seed(0)
    factory = pointwise_factory("drconv", regions=4, generator=generator, init="spread")
    block = Bottleneck(in_channels, out_channels, stride, 2, (7, 6), factory, factory, shared_guide=True)
    return _randomize_norms(block).eval()


@pytest.mark.parametrize("generator", ["paper", "basis"])
@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (1, 2, 0), (3, 2, 1), (3, 1, 2)])
def test_export_drconv_equals_the_layer(generator, kernel, stride, padding):
    layer = _layer(generator, kernel, stride, padding).double()
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ExportDRConv2d(layer)(x), layer(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hidden", [None, 8])
def test_export_drconv_with_two_terms_and_an_unused_region_equals_the_layer(hidden):
    layer = _layer("paper", hidden=hidden).double()
    _leave_region_unused(layer.guide, 2)
    x = torch.randn(2, 5, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        assert not (torch.argmax(layer.guide(x), 1) == 2).any()
        torch.testing.assert_close(ExportDRConv2d(layer)(x), layer(x), rtol=1e-10, atol=1e-10)


def test_export_drconv_external_guide_and_ties_go_to_the_lowest_region():
    torch.manual_seed(0)
    layer = DRConv2d(4, 3, 1, regions=3, external_guide=True, init="spread").double().eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    guide = torch.zeros(2, 3, 5, 5, dtype=torch.float64)  # every pixel ties: region 0
    guide[:, 2, :2] = 1.0  # rows 0-1: region 2
    with torch.no_grad():
        got = ExportDRConv2d(layer)(x, guide)
        torch.testing.assert_close(got, layer(x, guide), rtol=1e-10, atol=1e-10)
        filters = layer.filter_generator(x)[..., 0, 0]  # (B, m, O, C)
        want0 = torch.einsum("boc,bchw->bohw", filters[:, 0], x)
        torch.testing.assert_close(got[:, :, 2:], want0[:, :, 2:])


@pytest.mark.parametrize("stride,channels", [(1, (6, 6)), (2, (6, 8)), (1, (6, 8))],
                         ids=["stride1-shortcut", "stride2", "stride1-no-shortcut"])
def test_region_bottleneck_equals_the_block(stride, channels):
    block = _block(stride, *channels).double()
    _leave_region_unused(block.guide, 1)
    x = torch.randn(3, channels[0], 7, 6, dtype=torch.float64)
    assert ExportRegionBottleneck.supports(block)
    with torch.no_grad():
        torch.testing.assert_close(ExportRegionBottleneck(block)(x), block(x), rtol=1e-10, atol=1e-10)


def test_region_bottleneck_takes_only_paper_drconv_blocks():
    assert not ExportRegionBottleneck.supports(_block(1, generator="basis"))
    assert not ExportRegionBottleneck.supports(Bottleneck(6, 6, 1, 2, (7, 6)))
    with pytest.raises(TypeError, match="shared guide"):
        ExportRegionBottleneck(nn.Conv2d(3, 3, 1))


def test_export_refuses_an_opset_without_split_sizes(tmp_path):
    with pytest.raises(ValueError, match="opset 11 is too old"):
        export_onnx(create_model("drconv_mobilefacenet", input_size=(112, 96)), tmp_path / "m.onnx", opset=11)


def test_export_condconv_equals_the_layer():
    torch.manual_seed(0)
    layer = CondConv2d(4, 5, 3, stride=2, padding=1, experts=3, bias=True).double().eval()
    nn.init.normal_(layer.bias)
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ExportCondConv2d(layer)(x), layer(x), rtol=1e-10, atol=1e-10)


def test_exportable_wraps_a_copy_and_leaves_the_model_alone():
    model = create_model("drconv_mobilefacenet", input_size=(112, 96))
    keys = list(model.state_dict())
    clone = exportable(model)
    assert not any(isinstance(m, (ExportDRConv2d, ExportRegionBottleneck)) for m in model.modules())
    assert sum(isinstance(m, ExportRegionBottleneck) for m in clone.modules()) == 15
    assert not any(isinstance(m, ExportDRConv2d) for m in clone.modules())
    assert list(model.state_dict()) == keys and not clone.training
    basis = exportable(create_model("drconv_mobilefacenet", input_size=(112, 96), generator="basis"))
    assert sum(isinstance(m, ExportDRConv2d) for m in basis.modules()) == 30


@pytest.mark.parametrize("channels", [1, 6])
@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (7, 6)])
@pytest.mark.parametrize("top", [1.0, 1.5])  # slopes <= 1 take max(x, w x); a slope above 1 the four-op form
def test_export_prelu_equals_prelu_bit_for_bit(channels, shape, top):
    prelu = nn.PReLU(channels)
    with torch.no_grad():
        prelu.weight.copy_(torch.linspace(-0.5, top, channels) if channels > 1 else torch.tensor([top]))
    x = torch.randn(*shape)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, -1e-30])
    assert torch.equal(ExportPReLU(prelu)(x), prelu(x))


def test_exportable_replaces_every_prelu():
    for name in ("mobilefacenet", "drconv_mobilefacenet"):  # every PReLU, those of replaced blocks included
        clone = exportable(create_model(name, input_size=(112, 96)))
        wrapped = {id(m.layer) for m in clone.modules() if isinstance(m, ExportPReLU)}
        prelus = [m for m in clone.modules() if isinstance(m, nn.PReLU)]
        assert prelus and all(id(m) in wrapped for m in prelus)


def _onnx_file(module: nn.Module, x: torch.Tensor, path) -> str:
    """``exportable(module)`` as ONNX with a dynamic batch axis (input ``x``, output ``y``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes: shape reads become constants, only the batch is dynamic
        torch.onnx.export(exportable(module), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return str(path)


def _assert_onnx_matches(module: nn.Module, path: str, shape: tuple) -> None:
    ort = pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            want = module(x).numpy()
        got = session.run(["y"], {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("generator", ["paper", "basis"])
@pytest.mark.parametrize("stride", [1, 2])
def test_onnx_drconv_layer_matches_pytorch(generator, stride, tmp_path):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    layer = _layer(generator, stride=stride)
    _leave_region_unused(layer.guide, 3)
    path = _onnx_file(layer, torch.randn(2, 5, 6, 5), tmp_path / "layer.onnx")
    _assert_onnx_matches(layer, path, (5, 6, 5))


@pytest.mark.parametrize("stride", [1, 2])
def test_onnx_region_bottleneck_matches_pytorch(stride, tmp_path):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    block = _block(stride)
    _leave_region_unused(block.guide, 0)
    path = _onnx_file(block, torch.randn(2, 6, 7, 6), tmp_path / "block.onnx")
    _assert_onnx_matches(block, path, (6, 7, 6))


def _multiply_adds(path: str, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv, Gemm and MatMul of an ONNX file run on ``x`` (shapes read at run time)."""
    onnx = pytest.importorskip("onnx", reason='optional extra: pip install "facerec[export]"')
    ort = pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    known = {v.name for v in graph.output}
    graph.output.extend(v for v in graph.value_info if v.name not in known)  # every intermediate as an output
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {n: v.shape for n, v in zip(names, session.run(names, {"x": x.numpy()}))}
    shapes.update({t.name: tuple(t.dims) for t in graph.initializer})
    shapes["x"] = tuple(x.shape)
    total = 0
    for node in graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            total += int(np.prod(shapes[node.output[0]])) * shapes[node.input[1]][-2]  # outputs x K
        elif node.op_type == "Conv":
            weight = shapes[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(weight[1:]))
    return total


@pytest.mark.parametrize("generator,hidden", [("paper", None), ("paper", 8), ("basis", None)])
def test_onnx_drconv_does_about_a_conv_per_kernel_term(generator, hidden, tmp_path):
    """Paper 1x1: (1 + t) convs of multiply-adds (t = h/m) plus the guide; basis: r convs plus the guide. The form
    that computes every region's output costs m = 4 convs."""
    layer = _layer(generator, hidden=hidden)  # m = 4 regions, C = 5 -> O = 7
    x = torch.randn(3, 5, 6, 6)
    macs = _multiply_adds(_onnx_file(layer, x[:2], tmp_path / "layer.onnx"), x)
    conv, guide = 3 * 36 * 5 * 7, 3 * 36 * 5 * layer.regions
    if generator == "paper":
        terms = 1 + (hidden or layer.regions) // layer.regions
    else:
        terms = layer.filter_generator.num_bases
    assert terms < layer.regions
    assert terms * conv + guide <= macs <= terms * conv + guide + 1000  # + the generator's small layers


def _trained_looking(name, kw, size):
    """A model whose BN statistics and weights are not at their init values, so the check is not trivial."""
    torch.manual_seed(0)
    model = create_model(name, input_size=size, **kw)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d) and mod.affine:
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=gen) * 0.2 - 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            if isinstance(mod, nn.PReLU):  # per-channel slopes, so a wrong broadcast axis shows
                mod.weight.copy_(torch.rand(mod.num_parameters, generator=gen))
    return copy.deepcopy(model).eval()


@pytest.mark.parametrize("name,kw", VARIANTS, ids=[n + ("-" + k["generator"] if k else "") for n, k in VARIANTS])
def test_onnx_matches_pytorch(name, kw, tmp_path):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    size = (112, 96) if name != "local_mobilefacenet" else (112, 112)
    model = _trained_looking(name, kw, size)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    diff = compare_onnx(model, path, batch_size=3)  # exported with batch 2: the batch axis is dynamic
    onnx = pytest.importorskip("onnx")
    assert "PRelu" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    print(f"{name} {kw}: max |onnx - torch| of normalised embeddings = {diff:.2e}")
    assert diff <= 1e-4


class _TwoRegions(nn.Module):
    """A 1x1 DRConv (3 -> 4, m = 2) whose guide scores region 1 minus region 0 as the input's channel 0 (x
    ``gap``): a pixel whose channel 0 is 0 is an exact tie; ``gap=0`` ties every pixel."""

    input_size = (5, 4)

    def __init__(self, gap: float = 1.0) -> None:
        super().__init__()
        self.layer = DRConv2d(3, 4, 1, regions=2, init="spread")
        with torch.no_grad():
            self.layer.guide.weight.zero_()
            self.layer.guide.weight[1, 0] = gap
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).flatten(1)


def _channel0_away_from_zero(batch: int) -> torch.Tensor:
    x = torch.rand(batch, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[:, 0] = 0.5 + 0.5 * x[:, 0].abs()  # channel 0 in [0.5, 1]: every pixel's gap is >= half the largest
    return x


def test_near_tied_samples_finds_the_sample_with_a_tied_pixel():
    model = _TwoRegions()
    x = _channel0_away_from_zero(3)
    x[1, 0, 2, 3] = 0.0                           # sample 1: one pixel exactly tied
    assert near_tied_samples(model, x).tolist() == [False, True, False]
    x[1, 0, 2, 3] = 1e-3                          # a gap of 1e-3 of the largest |F|: tied at margin 1e-2 only
    assert near_tied_samples(model, x).tolist() == [False, False, False]
    assert near_tied_samples(model, x, margin=1e-2).tolist() == [False, True, False]
    assert not near_tied_samples(nn.Sequential(nn.Conv2d(3, 2, 1)), x).any()  # no guide, no ties


def test_compare_onnx_leaves_near_tied_samples_out(tmp_path):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    model = _TwoRegions()
    path = export_onnx(model, tmp_path / "two.onnx")
    x = _channel0_away_from_zero(2)
    x[0, 0, 1, 1] = 0.0
    assert compare_onnx(model, path, images=x) <= 1e-5        # sample 1 compared, sample 0 left out
    with pytest.raises(ValueError, match="all 1 images have a near-tied guided mask"):
        compare_onnx(model, path, images=x[:1])
    assert compare_onnx(model, path) <= 1e-5                  # random draws: untied ones found


def test_compare_onnx_says_when_no_untied_inputs_can_be_drawn(tmp_path):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    model = _TwoRegions(gap=0.0)                   # every pixel tied: ties go to region 0 in both runtimes
    path = export_onnx(model, tmp_path / "tied.onnx")
    with pytest.raises(ValueError, match="3 draws of random inputs gave 0 of 2"):
        compare_onnx(model, path, batch_size=2, max_draws=3)
    assert compare_onnx(model, path, batch_size=2, tie_margin=0.0) <= 1e-5   # margin 0 keeps every sample


@pytest.mark.slow
def test_export_cli_passes_on_the_shipped_drconv_model(tmp_path, capsys):
    """The shipped model has near-tied pixels on some random inputs (seed 0's second sample): the check must not
    fail on them."""
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    from pathlib import Path

    from facerec.cli.export import main as export_main

    ckpt = Path(__file__).resolve().parents[2] / "data/pretrained/drconv_mobilefacenet.pt"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "drconv.onnx")]) == 0
    assert "(ok, tolerance 0.0001)" in capsys.readouterr().out
