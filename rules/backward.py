"""One layer's backward under a feedback rule, for the layers rules.handle cannot hand to autograd's own node.

Most layers never come here: their backward is PyTorch's native node, given B in place of W (rules/handle.py).
This is the explicit equivalent for the rest (a forward under saved-tensor hooks of the user's, such as activation
checkpointing): the single kernel call backpropagation would make, one aten.convolution_backward (or the Linear
matmuls) with the output mask the running backward pass needs and B handed in where autograd would hand W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, module: nn.Module,
    need_x: bool, need_w: bool, need_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dL/dx with B, dL/dW, dL/dbias) for one Conv/Linear layer; `b` may be None when dL/dx is not needed."""
    matrix = b if (need_x and b is not None) else w
    if matrix.dtype != g.dtype:  # autocast: the error arrives in half precision
        matrix = matrix.to(g.dtype)
    if x.dtype != g.dtype:
        x = x.to(g.dtype)
    if isinstance(module, nn.Linear):
        return linear_backward(g, x, matrix, need_x, need_w, need_b)
    return conv_backward(g, x, matrix, module, need_x, need_w, need_b)
