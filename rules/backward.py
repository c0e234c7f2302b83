"""One layer's backward under a feedback rule: exact weight and bias gradients, input gradient with B.

Each layer gets exactly the kernel call backpropagation would make: one aten.convolution_backward (or the
Linear matmuls) with the output mask the current backward pass needs, with B handed in where autograd would hand
W. So nothing is computed twice, and an attack that asks only for d loss / d input never computes a weight
gradient (BioTorch computes them anyway, which makes its attack steps 2.4x slower).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rules.base import Feedback


def _conv_geometry(module: nn.modules.conv._ConvNd) -> tuple[list[int] | None, list[int]]:
    """(symmetric padding for the kernel call, or None if the module pads explicitly) and F.pad's amounts."""
    nd = module.weight.dim() - 2
    pad_twice = list(module._reversed_padding_repeated_twice)  # (last dim left, right, ...)
    if module.padding_mode != "zeros":
        return None, pad_twice
    if module.padding == "valid":
        return [0] * nd, pad_twice
    if module.padding == "same":
        lefts, rights = pad_twice[0::2][::-1], pad_twice[1::2][::-1]
        return (lefts if lefts == rights else None), pad_twice
    return list(module.padding), pad_twice


def conv_backward(
    g: torch.Tensor, x: torch.Tensor, w_or_b: torch.Tensor, module: nn.modules.conv._ConvNd,
    need_x: bool, need_w: bool, need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of module's convolution; the input gradient uses `w_or_b` as the weight (B under a rule).

    Handles stride, dilation, groups, 'same'/'valid' padding (asymmetric too) and every padding_mode.
    """
    nd = w_or_b.dim() - 2
    bias_sizes = [w_or_b.shape[0]] if need_b else None
    mask = (need_x, need_w, need_b)
    sym, pad_twice = _conv_geometry(module)
    if sym is not None:
        return torch.ops.aten.convolution_backward(
            g, x, w_or_b, bias_sizes, list(module.stride), sym, list(module.dilation), False, [0] * nd,
            module.groups, mask,
        )
    # The module pads explicitly (F.pad, then a convolution with padding 0): go through both.
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    with torch.enable_grad():
        probe = x.detach().requires_grad_(need_x)
        padded = F.pad(probe, pad_twice, mode=mode)
    gxp, gw, gb = torch.ops.aten.convolution_backward(
        g, padded.detach(), w_or_b, bias_sizes, list(module.stride), [0] * nd, list(module.dilation), False,
        [0] * nd, module.groups, mask,
    )
    gx = torch.autograd.grad(padded, probe, gxp)[0] if need_x else None
    return gx, gw, gb


def linear_backward(
    g: torch.Tensor, x: torch.Tensor, w_or_b: torch.Tensor, need_x: bool, need_w: bool, need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of y = x W^T + bias for inputs of any rank nn.Linear accepts (1-D included)."""
    gx = torch.matmul(g, w_or_b) if need_x else None
    gw = gb = None
    if need_w or need_b:
        g2 = g.reshape(-1, g.shape[-1])
        if need_w:
            gw = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if need_b:
            gb = g2.sum(0)
    return gx, gw, gb


def layer_backward(
    g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, fb: Feedback | None, module: nn.Module,
    need_x: bool, need_w: bool, need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dL/dx with B, dL/dW, dL/dbias) for one Conv/Linear layer; `fb` may be None when dL/dx is not needed."""
    matrix, scale = (fb.matrix, fb.scale) if (need_x and fb is not None) else (w, 1.0)
    scale_error = False
    if scale != 1.0:
        # Apply the scalar where it is cheaper: to B (a temporary) on accelerators when B is the smaller tensor,
        # otherwise in place to the error sent down (no allocation; on the CPU that is always the better choice).
        if matrix.device.type != "cpu" and matrix.numel() < x.numel():
            matrix = matrix * scale
        else:
            scale_error = True
    if matrix.dtype != g.dtype:  # autocast: the error arrives in half precision
        matrix = matrix.to(g.dtype)
    if x.dtype != g.dtype:
        x = x.to(g.dtype)
    if isinstance(module, nn.Linear):
        gx, gw, gb = linear_backward(g, x, matrix, need_x, need_w, need_b)
    else:
        gx, gw, gb = conv_backward(g, x, matrix, module, need_x, need_w, need_b)
    if scale_error and gx is not None:
        gx.mul_(scale)
    return gx, gw, gb
