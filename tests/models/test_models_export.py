"""ONNX export: the export forwards equal the layers (float64), and every variant's ONNX file matches PyTorch."""
import copy

import pytest
import torch
from torch import nn

from facerec.models import create_model
from facerec.models.export import ExportCondConv2d, ExportDRConv2d, compare_onnx, export_onnx, exportable
from facerec.nn import CondConv2d, DRConv2d

VARIANTS = [("mobilefacenet", {}), ("drconv_mobilefacenet", {}), ("drconv_mobilefacenet", {"generator": "basis"}),
            ("condconv_mobilefacenet", {}), ("local_mobilefacenet", {})]


@pytest.mark.parametrize("generator", ["paper", "basis"])
@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (1, 2, 0), (3, 2, 1), (3, 1, 2)])
def test_export_drconv_equals_the_layer(generator, kernel, stride, padding):
    torch.manual_seed(0)
    layer = DRConv2d(5, 6, kernel, stride, padding, dilation=1 if padding < 2 else 2, regions=4, init="spread",
                     generator=generator, bias=True).double().eval()
    nn.init.normal_(layer.bias)
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64)
    with torch.no_grad():
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
    assert not any(isinstance(m, (ExportDRConv2d, ExportCondConv2d)) for m in model.modules())
    assert sum(isinstance(m, ExportDRConv2d) for m in clone.modules()) == 30
    assert list(model.state_dict()) == keys and not clone.training


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
    return copy.deepcopy(model).eval()


@pytest.mark.parametrize("name,kw", VARIANTS, ids=[n + ("-" + k["generator"] if k else "") for n, k in VARIANTS])
def test_onnx_matches_pytorch(name, kw, tmp_path):
    pytest.importorskip("onnxruntime", reason='optional extra: pip install "facerec[export]"')
    size = (112, 96) if name != "local_mobilefacenet" else (112, 112)
    model = _trained_looking(name, kw, size)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    diff = compare_onnx(model, path, batch_size=3)  # exported with batch 2: the batch axis is dynamic
    print(f"{name} {kw}: max |onnx - torch| of normalised embeddings = {diff:.2e}")
    assert diff <= 1e-4
