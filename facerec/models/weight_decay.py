"""Optimizer parameter groups for the MobileFaceNet paper's weight decay (Chen et al. 2018, section 4.1).

The paper: weight decay 4e-5, except 4e-4 for the layers after the global operator (GDConv) and the
classifier. Our reading, explicit:

* ``late`` group, ``wd_late`` (4e-4): the weights of the backbone's modules listed in its
  ``late_module_names`` (MobileFaceNet: ``embedding``, the linear 1x1 conv after the GDConv) and the head's
  class weights.
* ``decay`` group, ``wd`` (4e-5): every other conv / linear weight, including the DRConv guide convs and
  filter generators, CondConv experts and routing, and local-conv weights.
* ``no_decay`` group, 0: BatchNorm affine parameters, PReLU slopes and biases (also those after the GDConv).
  Decaying BN scales only fights the next layer's scale (the conv before a BN is scale-invariant), and
  decaying PReLU slopes pulls them towards ReLU, which MobileFaceNet chose PReLU to avoid (TreB1eN excludes
  BN, Xiaoccer excludes PReLU; we exclude both).
* Filters that only their name makes a bias decay like conv weights: a module lists them (names relative to
  itself) in ``filter_parameter_names``. The DRConv paper generator holds its per-region filters as
  ``expand.bias`` (m x O x C per layer, most of DRConv's extra parameters; ``PaperFilterGenerator``), so they
  go to ``decay`` / ``late`` with the conv weights, never to ``no_decay``.
* ``region_factor`` (``optim.weight_decay_region_factor``, default 1) multiplies the decay of the parameters that
  give each region its own filter: a module lists them in ``region_parameter_names`` (the paper generator's
  per-region deltas ``expand.bias`` and dynamic part ``expand.weight``; the shared filter ``shared`` is not
  among them). With a factor other than 1 they form their own group (``decay_region`` / ``late_region``), so
  the decay pulls every region's filter towards the shared one, a plain conv, harder than it pulls the
  shared filter towards zero.

Every trainable parameter lands in exactly one group; frozen ones are left out.
"""
from typing import Any, Dict, List, Optional

import torch.nn as nn

from facerec._quote import quote

__all__ = ["param_groups"]

_NO_DECAY_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


def param_groups(backbone: nn.Module, head: Optional[nn.Module] = None, wd: float = 4e-5,
                 wd_late: float = 4e-4, region_factor: float = 1.0) -> List[Dict[str, Any]]:
    """Groups for ``torch.optim.SGD(param_groups(...), lr=..., momentum=0.9)``.

    Returns ``[{"name": "decay", "params": [...], "weight_decay": wd}, {"name": "late", ...,
    "weight_decay": wd_late}, {"name": "no_decay", ..., "weight_decay": 0.0}]`` and, when ``region_factor`` is
    not 1, ``"decay_region"`` (wd * region_factor) and ``"late_region"`` (wd_late * region_factor); empty groups
    are dropped.
    """
    for key, value in (("wd", wd), ("wd_late", wd_late), ("region_factor", region_factor)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {quote(value)}")
    late_prefixes = tuple(getattr(backbone, "late_module_names", ()))
    groups: Dict[str, List[nn.Parameter]] = {"decay": [], "late": [], "no_decay": [], "decay_region": [],
                                             "late_region": []}
    seen = set()
    modules = [backbone] + ([head] if head is not None else [])

    def listed(attr: str) -> set:
        return {id(mod.get_parameter(name)) for module in modules for mod in module.modules()
                for name in getattr(mod, attr, ())}

    filters = listed("filter_parameter_names")
    regional = listed("region_parameter_names") if region_factor != 1 else set()

    def visit(module: nn.Module, all_late: bool) -> None:
        for mod_name, mod in module.named_modules():
            is_late = all_late or any(mod_name == p or mod_name.startswith(p + ".") for p in late_prefixes)
            for p_name, param in mod.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                is_bias = p_name == "bias" or p_name.endswith("_bias")
                if id(param) not in filters and (isinstance(mod, _NO_DECAY_MODULES) or is_bias):
                    groups["no_decay"].append(param)
                else:
                    base = "late" if is_late else "decay"
                    groups[base + ("_region" if id(param) in regional else "")].append(param)

    visit(backbone, False)
    if head is not None:
        visit(head, True)
    decay = {"decay": float(wd), "late": float(wd_late), "no_decay": 0.0,
             "decay_region": float(wd) * region_factor, "late_region": float(wd_late) * region_factor}
    return [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in groups.items() if v]
