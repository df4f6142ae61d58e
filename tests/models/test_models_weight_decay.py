"""Weight-decay parameter groups: 4e-5 / 4e-4 after the GDConv and on the classifier / 0 on BN, PReLU, bias."""
import pytest
import torch.nn as nn

from facerec.models import create_head, create_model, param_groups


@pytest.mark.parametrize("name", ["mobilefacenet", "drconv_mobilefacenet"])
def test_groups_partition_every_parameter(name):
    model = create_model(name)
    head = create_head("am_softmax", 128, 10)
    groups = param_groups(model, head)
    by_name = {g["name"]: g for g in groups}
    assert {g["name"]: g["weight_decay"] for g in groups} == {"decay": 4e-5, "late": 4e-4, "no_decay": 0.0}
    ids = [id(p) for g in groups for p in g["params"]]
    everything = list(model.parameters()) + list(head.parameters())
    assert len(ids) == len(set(ids)) == len(everything)
    late = {id(p) for p in by_name["late"]["params"]}
    assert late == {id(model.embedding[0].weight), id(head.weight)}
    no_decay = {id(p) for p in by_name["no_decay"]["params"]}
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.PReLU)):
            assert all(id(p) in no_decay for p in module.parameters())
    assert id(model.stem[0][0].weight) in {id(p) for p in by_name["decay"]["params"]}


def test_frozen_parameters_left_out_and_bad_values():
    model = create_model("mobilefacenet")
    model.stem.requires_grad_(False)
    ids = {id(p) for g in param_groups(model, wd=1e-4) for p in g["params"]}
    assert id(model.stem[0][0].weight) not in ids
    assert id(model.embedding[0].weight) in ids
    with pytest.raises(ValueError, match="wd"):
        param_groups(model, wd=-1)


def test_drconv_region_filters_decay_like_conv_weights():
    """The paper generator's per-region filters live in ``expand.bias``: they decay (4e-5) like conv weights."""
    model = create_model("drconv_mobilefacenet", regions=4)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model)}
    gens = [m for m in model.modules() if type(m).__name__ == "PaperFilterGenerator"]
    assert gens
    for gen in gens:
        assert id(gen.expand.bias) in groups["decay"]
        assert id(gen.shared) in groups["decay"] and id(gen.expand.weight) in groups["decay"]
        assert id(gen.squeeze.bias) in groups["no_decay"]       # a real bias (before the sigmoid)
    # every decayed DRConv parameter count: shared + deltas + V + squeeze + guide weights; no filter is left out
    no_decay = sum(p.numel() for p in model.parameters() if id(p) in groups["no_decay"])
    plain = sum(p.numel() for g in param_groups(create_model("mobilefacenet")) if g["name"] == "no_decay"
                for p in g["params"])
    extra_no_decay = no_decay - plain
    assert extra_no_decay == sum(g.squeeze.bias.numel() for g in gens)


def test_region_factor_moves_only_the_per_region_parts():
    """region_factor != 1: the paper generator's deltas and V get wd x factor; shared filters and plain convs keep
    wd; factor 1 gives exactly the three default groups (checkpoints of default runs keep their optimizer state)."""
    model = create_model("drconv_mobilefacenet", regions=4)
    head = create_head("am_softmax", 128, 10)
    default = param_groups(model, head)
    assert [g["name"] for g in default] == ["decay", "late", "no_decay"]
    assert [[id(p) for p in g["params"]] for g in param_groups(model, head, region_factor=1.0)] == \
        [[id(p) for p in g["params"]] for g in default]
    groups = param_groups(model, head, region_factor=100.0)
    by_name = {g["name"]: g for g in groups}
    assert {g["name"]: g["weight_decay"] for g in groups} == pytest.approx(
        {"decay": 4e-5, "late": 4e-4, "no_decay": 0.0, "decay_region": 4e-3})
    regional = {id(p) for p in by_name["decay_region"]["params"]}
    gens = [m for m in model.modules() if type(m).__name__ == "PaperFilterGenerator"]
    assert regional == {id(p) for g in gens for p in (g.expand.weight, g.expand.bias)}
    assert all(id(g.shared) in {id(p) for p in by_name["decay"]["params"]} for g in gens)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters())) + len(list(head.parameters()))
    # a plain model has no per-region parts: the factor changes nothing
    plain = create_model("mobilefacenet")
    assert [g["name"] for g in param_groups(plain, region_factor=100.0)] == ["decay", "late", "no_decay"]
    with pytest.raises(ValueError, match="region_factor"):
        param_groups(model, region_factor=-1)


def test_optimizer_takes_the_region_factor_from_the_config():
    from facerec.config import OptimConfig
    from facerec.train.builders import build_optimizer

    model = create_model("drconv_mobilefacenet", regions=4)
    head = create_head("am_softmax", 128, 10)
    opt = build_optimizer(OptimConfig(weight_decay_region_factor=10.0), model, head)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["decay_region"] == pytest.approx(4e-4)
    with pytest.raises(ValueError, match="optim.weight_decay_region_factor"):
        OptimConfig(weight_decay_region_factor=-0.5)
