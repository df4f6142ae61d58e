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
