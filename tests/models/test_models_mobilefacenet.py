"""MobileFaceNet family: architecture of the paper's table, forward/backward/eval for every registry model."""
import hashlib

import pytest
import torch
import torch.nn as nn

from facerec.models import MOBILEFACENET_SETTINGS, Bottleneck, MobileFaceNet, create_model, list_models
from facerec.nn import pointwise_factory

SIZES = [(112, 112), (112, 96)]
MODELS = ["mobilefacenet", "drconv_mobilefacenet", "condconv_mobilefacenet", "local_mobilefacenet"]


def test_registry_lists_the_four_table2_models():
    assert list_models() == MODELS


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        create_model("resnet50")
    for name in MODELS:
        assert name in str(err.value)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="input_size"):
        create_model("mobilefacenet", input_size=(96, 96))
    with pytest.raises(ValueError, match="embedding_size"):
        create_model("mobilefacenet", embedding_size=0)
    with pytest.raises(TypeError, match="regions"):
        create_model("mobilefacenet", regions=8)
    with pytest.raises(ValueError, match="local_layers"):
        create_model("local_mobilefacenet", local_layers=9)
    model = create_model("mobilefacenet", input_size=(112, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 96\)"):
        model(torch.zeros(1, 3, 112, 112))


def test_layer_table_matches_the_paper():
    model = MobileFaceNet(input_size=(112, 96))
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == sum(n for _, _, n, _ in MOBILEFACENET_SETTINGS) == 15
    expected = []
    in_c = 64
    for t, c, n, s in MOBILEFACENET_SETTINGS:
        for i in range(n):
            expected.append((in_c, in_c * t, c, s if i == 0 else 1))
            in_c = c
    got = [(b.expand.in_channels, b.expand.out_channels, b.project.out_channels, b.stride) for b in blocks]
    assert got == expected
    # shortcut only when stride 1 and channels match: blocks 1, 2 (stage starts), 7 and 13 have none
    assert [b.use_shortcut for b in blocks] == [False, True, True, True, True, False, True, True, True, True,
                                                True, True, False, True, True]
    # projections are linear: no PReLU after project_bn; expansion and depthwise have PReLU
    for b in blocks:
        assert isinstance(b.expand_act, nn.PReLU) and isinstance(b.depthwise_act, nn.PReLU)
        assert not hasattr(b, "project_act")
        assert b.depthwise.groups == b.depthwise.in_channels and b.depthwise.kernel_size == (3, 3)
    assert model.gdconv[0].kernel_size == (7, 6) and model.gdconv[0].groups == 512
    assert not any(isinstance(m, nn.PReLU) for m in model.gdconv)
    assert not any(isinstance(m, nn.PReLU) for m in model.embedding)
    assert MobileFaceNet(input_size=(112, 112)).gdconv[0].kernel_size == (7, 7)
    # every conv is followed by a BN: count them
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 2 + 15 * 3 + 3


def test_any_embedding_size():
    model = create_model("mobilefacenet", embedding_size=7).eval()
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 7)


def test_local_variant_uses_local_in_the_last_three_bottleneck_layers():
    model = create_model("local_mobilefacenet", input_size=(112, 96))
    blocks = [b for stage in model.stages for b in stage]
    kinds = []
    for b in blocks:
        kinds += [type(b.expand).__name__, type(b.project).__name__]
    assert kinds[:27] == ["Conv2d"] * 27
    assert len(set(kinds[27:])) == 1 and kinds[27] != "Conv2d"


def test_drconv_blocks_share_one_guide():
    from facerec.nn import guide_modules

    model = create_model("drconv_mobilefacenet", input_size=(112, 96))
    guides = list(guide_modules(model))
    names = [g[0] if isinstance(g, tuple) else g for g in guides]
    block_guides = [n for n in names if n.endswith(".guide") and n.count(".") == 3]
    assert len(block_guides) == 15
    for b in (b for stage in model.stages for b in stage):
        assert b.guide.out_channels == 8 and b.guide.kernel_size == (1, 1)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    # DRConv's default init="static" starts every layer as a conv (dynamic part and region differences zero, so
    # the guide and generator squeeze get exactly zero gradient at step 0, by design); "spread" shows the paths.
    kw = {"init": "spread"} if name == "drconv_mobilefacenet" else {}
    model = create_model(name, input_size=(112, 96), embedding_size=16, **kw)
    out = model(torch.randn(2, 3, 112, 96))
    assert out.shape == (2, 16) and out.dtype == torch.float32
    (out * torch.randn(2, 16)).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"
    zero = [p for p, q in model.named_parameters() if q.grad.abs().sum() == 0]
    assert not zero, f"{name}: all-zero gradients for {zero}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", SIZES)
def test_eval_forward_is_deterministic(name, size):
    torch.manual_seed(0)
    model = create_model(name, input_size=size).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (1, 128)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all() and a.abs().sum() > 0


def test_stride2_block_feeds_the_subsampled_guide_to_its_projection():
    torch.manual_seed(0)
    drconv = pointwise_factory("drconv", regions=4)
    block = Bottleneck(8, 12, 2, 2, (9, 7), drconv, drconv, shared_guide=True)
    seen = {}
    block.guide.register_forward_hook(lambda m, i, o: seen.__setitem__("guide", o))
    block.expand.register_forward_pre_hook(lambda m, a: seen.__setitem__("expand", a[1]))
    block.project.register_forward_pre_hook(lambda m, a: seen.__setitem__("project", a[1]))
    out = block(torch.randn(2, 8, 9, 7))
    assert out.shape == (2, 12, 5, 4)
    assert seen["expand"] is seen["guide"]
    assert torch.equal(seen["project"], seen["guide"][..., ::2, ::2])
    assert block.expand.guide is None and block.project.guide is None


# state_dict keys and shapes of every variant, hashed before the pointwise dispatch moved into
# facerec.nn.pointwise_factory: checkpoints trained before it must keep loading.
# DRConv rows changed once on purpose: every guide gained its norm's buffers (guide.norm.running_mean/var,
# num_batches_tracked: 3 per guide) and every paper generator its ``shared`` filter (1 per layer).
STATE_DICT_DIGESTS = {
    ("mobilefacenet", (112, 112)): (333, "3ea0c57faaa26dc1"),
    ("mobilefacenet", (112, 96)): (333, "41a27a88256b29cb"),
    ("drconv_mobilefacenet", (112, 112)): (513, "ef78d179843e4e72"),
    ("drconv_mobilefacenet", (112, 96)): (513, "ab1740e219b2b203"),
    ("condconv_mobilefacenet", (112, 112)): (393, "197a6a0f4812e9bb"),
    ("condconv_mobilefacenet", (112, 96)): (393, "f68519c12aa0332b"),
    ("local_mobilefacenet", (112, 112)): (333, "fa9ac62b262411eb"),
    ("local_mobilefacenet", (112, 96)): (333, "b9ebc4424191b28c"),
    ("drconv_mobilefacenet", "generator=basis"): (453, "1e9cc6dccf61d8af"),
    ("drconv_mobilefacenet", "shared_guide=False"): (573, "e88a28913eda9ac4"),
}


@pytest.mark.parametrize("key", list(STATE_DICT_DIGESTS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_state_dict_keys_and_shapes_unchanged(key):
    name, variant = key
    if isinstance(variant, tuple):
        model = create_model(name, input_size=variant)
    else:
        option, value = variant.split("=")
        model = create_model(name, **{option: value == "True" if value in ("True", "False") else value})
    state = model.state_dict()
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    assert (len(state), hashlib.sha256(text.encode()).hexdigest()[:16]) == STATE_DICT_DIGESTS[key]


def test_pointwise_per_layer_factories_and_errors():
    kinds = ["standard"] * 28 + [pointwise_factory("condconv", experts=2)] * 2
    model = MobileFaceNet(input_size=(112, 96), pointwise=kinds)
    last = model.stages[-1][-1]
    assert last.expand.experts == 2 and isinstance(model.stages[0][0].expand, nn.Conv2d)
    with pytest.raises(ValueError, match="unknown pointwise kind 'dynamic'"):
        MobileFaceNet(pointwise="dynamic")
    with pytest.raises(ValueError, match="pointwise_kwargs needs"):
        MobileFaceNet(pointwise=["drconv"] * 30, pointwise_kwargs={"regions": 4})
    with pytest.raises(ValueError, match="sequence of 30"):
        MobileFaceNet(pointwise=["drconv"] * 29)
    with pytest.raises(TypeError, match="experts"):
        create_model("drconv_mobilefacenet", experts=4)


@pytest.mark.parametrize("generator", ["paper", "basis"])
def test_drconv_static_start_is_the_plain_network_in_value_and_gradient(generator):
    # DRConv-MobileFaceNet at init="static" with the plain network's weights computes the plain network: same
    # embedding and, for every shared parameter, the same gradient (up to float32 rounding, a few percent at
    # most here; a missing or misrouted term would be off by O(1)); the pointwise weight's gradient reaches the
    # paper generator's `shared` filter whole, the guide gets none. The real-face study's loss gap
    # (docs/real-faces.md) is training dynamics, not the start.
    torch.manual_seed(0)
    plain = create_model("mobilefacenet", input_size=(112, 96), embedding_size=16)
    dr = create_model("drconv_mobilefacenet", input_size=(112, 96), embedding_size=16, generator=generator)
    src, dst = plain.state_dict(), dr.state_dict()
    with torch.no_grad():
        for name, value in dst.items():
            if name in src:
                value.copy_(src[name])
            elif generator == "paper" and name.endswith("filter_generator.shared"):
                value.copy_(src[name.replace("filter_generator.shared", "weight")])
            elif generator == "basis" and name.endswith("filter_generator.basis.weight"):
                # zero routing mixes the r bases equally (a = 1/r): every basis = the plain weight
                weight = src[name.replace("filter_generator.basis.weight", "weight")]
                value.copy_(weight.repeat(value.shape[0] // weight.shape[0], 1, 1, 1))
    x = torch.randn(4, 3, 112, 96)
    probe = torch.randn(4, 16)
    outs = []
    for model in (plain, dr):
        out = model(x)
        (out * probe).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    plain_params = dict(plain.named_parameters())
    checked = 0
    for name, param in dr.named_parameters():
        ref = plain_params.get(name)
        if ref is None and generator == "paper" and name.endswith("filter_generator.shared"):
            ref = plain_params[name.replace("filter_generator.shared", "weight")]
        if ref is not None:
            # absolute floor: BN biases right before another BN get ~1e-9 gradients (0 in exact arithmetic) and
            # cancelling BN-scale gradients ~1e-3; float64 passes at 1e-8 but costs ~10x the time
            err = (param.grad - ref.grad).norm()
            assert err <= 2e-2 * ref.grad.norm() + 1e-4, f"{name}: {err} vs {ref.grad.norm()}"
            checked += 1
        elif ".guide." in name:
            assert param.grad.abs().max() < 1e-4, name       # 0 in exact arithmetic
    assert checked == len(plain_params) - (0 if generator == "paper" else 30)
