"""Slow float64 references for the nn tests (loops over samples and regions; no shared code with facerec.nn)."""
import torch
import torch.nn.functional as F


def all_region_outputs(x, filters, stride, padding, dilation):
    """(B, m, O, Ho, Wo): every region's filter applied to every pixel, one sample and region at a time."""
    batch, regions = filters.shape[:2]
    per_region = []
    for j in range(regions):
        per_region.append(torch.cat([F.conv2d(x[b:b + 1], filters[b, j], stride=stride, padding=padding,
                                              dilation=dilation) for b in range(batch)]))
    return torch.stack(per_region, 1)


def reference_region_conv(x, filters, guide, stride=1, padding=0, dilation=1):
    """Value: argmax-region output. Gradients: hard mask for x/filters, Eq.7-8 (softmax straight-through) for guide."""
    outs = all_region_outputs(x, filters, stride, padding, dilation)
    regions = filters.shape[1]
    soft = torch.softmax(guide, 1)
    hard = F.one_hot(guide.argmax(1), regions).permute(0, 3, 1, 2).to(guide.dtype)
    value = (hard.unsqueeze(2) * outs).sum(1)
    straight = ((soft - soft.detach()).unsqueeze(2) * outs.detach()).sum(1)
    return value + straight


def loop_forward(x, filters, guide, stride=1, padding=0, dilation=1):
    """Pixel-by-pixel forward: output[b, :, p] = W[b, argmax_j guide[b, j, p]] * patch(p)."""
    outs = all_region_outputs(x, filters, stride, padding, dilation)
    batch, _, out_channels, out_h, out_w = outs.shape
    y = torch.zeros(batch, out_channels, out_h, out_w, dtype=x.dtype)
    for b in range(batch):
        for u in range(out_h):
            for v in range(out_w):
                j = int(torch.argmax(guide[b, :, u, v]))
                y[b, :, u, v] = outs[b, j, :, u, v]
    return y
