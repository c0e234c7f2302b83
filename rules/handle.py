"""Attaching a rule to a model with module hooks.

For every Conv/Linear whose input needs a gradient:
- the forward pre-hook switches grad mode off, so the module's own forward builds no autograd node;
- the forward hook switches it back on (it runs even if the forward raised) and passes the output through
  `_RuleLayer`, an identity marked as in-place (no copy, no view, so in-place activations after the layer still
  work) whose graph edges are the layer's input, weight and bias.
`_RuleLayer.backward` makes the single kernel call backpropagation would make, with B in place of W for the input
gradient and the output mask the running backward pass actually needs (see rules/backward.py).
Layers whose input needs no gradient (the image batch in training) and every forward without grad mode (evaluation)
are left to plain autograd, so they cost exactly what they cost without a rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rules.backward import layer_backward
from rules.base import FEEDBACK_LAYER_TYPES, Feedback, Layer, Rule
from rules.registry import get_rule
from rules.streams import UniformStream

_ATTR = "_sigsym_rule_handle"


def _needed(ctx: Any, i: int) -> bool:
    """Will the running backward pass use the gradient of input i? (autograd.grad w.r.t. the image skips weights)"""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    return node is None or torch._C._will_engine_execute_node(node)


def _edge(t: torch.Tensor | None) -> torch.Tensor | None:
    """A leaf as a zero-copy alias with its own graph node.

    The engine can tell whether a non-leaf node will run in the current backward pass, but refuses to for a leaf's
    gradient accumulator during autograd.grad; an alias's node answers for it.
    """
    if t is not None and t.requires_grad and t.is_leaf:
        return t.view_as(t)
    return t


class _RuleLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, x, weight, bias, owner: RuleHandle, layer: Layer):  # type: ignore[override]
        ctx.mark_dirty(out)
        ctx.save_for_backward(x, weight)
        ctx.owner, ctx.layer = owner, layer
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = _needed(ctx, 1), _needed(ctx, 2), _needed(ctx, 3)
        fb = ctx.owner._feedback_for_backward(ctx.layer) if need_x else None
        gx, gw, gb = layer_backward(g, x, w, fb, ctx.layer.module, need_x, need_w, need_b)
        return None, gx, gw, gb, None, None


class RuleHandle:
    """A rule attached to a model: `detach()` restores plain autograd, `exact()` gives exact gradients for a block."""

    def __init__(self, model: nn.Module, rule: Rule, layers: list[Layer], seed: int) -> None:
        self.model = model
        self.rule = rule
        self.seed = int(seed)
        self.layers: dict[str, Layer] = {layer.name: layer for layer in layers}
        self.stream = UniformStream(self.seed)
        self._hooks: list[RemovableHandle] = []
        self._exact_depth = 0
        self.attached = True
        if not rule.exact:
            for layer in layers:
                self._install(layer)

    @property
    def name(self) -> str:
        return self.rule.name

    def __deepcopy__(self, memo: dict) -> RuleHandle:
        # The hooks of a deep-copied model would still point at this handle and the original layers, so the copy
        # would send back errors computed from the original's weights. Refuse rather than be silently wrong.
        raise TypeError(
            f"cannot deepcopy a model while rule {self.name!r} is attached: copy it before attach(), or detach(), "
            "copy, and re-attach both with attach(model, name, state=handle.state_dict())"
        )

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"RuleHandle(rule={self.name!r}, seed={self.seed}, layers={len(self.layers)}, {state})"

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _install(self, layer: Layer) -> None:
        stash: list[torch.Tensor | None] = []

        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if (
                self._exact_depth
                or not isinstance(x, torch.Tensor)
                or not x.requires_grad
                or not torch.is_grad_enabled()
            ):
                stash.append(None)
                return
            stash.append(x)
            torch.set_grad_enabled(False)

        def post_hook(module: nn.Module, args: tuple, out: Any) -> torch.Tensor | None:
            x = stash.pop() if stash else None
            if x is None:
                return None
            torch.set_grad_enabled(True)
            if not isinstance(out, torch.Tensor):  # the forward raised; grad mode is restored, nothing to wire
                return None
            if out._is_view():  # e.g. nn.Linear on a 1-D input; autograd forbids rewiring a no-grad view in place
                out = out.clone()
            return _RuleLayer.apply(out, _edge(x), _edge(module.weight), _edge(module.bias), self, layer)

        self._hooks.append(layer.module.register_forward_pre_hook(pre_hook))
        self._hooks.append(layer.module.register_forward_hook(post_hook, always_call=True))

    def detach(self) -> None:
        """Remove every hook: the model is plain autograd again (graphs built before keep their rule)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.attached = False
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)

    @contextlib.contextmanager
    def exact(self) -> Iterator[RuleHandle]:
        """Forwards run inside this block get exact (BP) gradients; the rule applies again after it."""
        self._exact_depth += 1
        try:
            yield self
        finally:
            self._exact_depth -= 1

    # -- feedback matrices ---------------------------------------------------------------------------------------
    def _feedback_for_backward(self, layer: Layer) -> Feedback:
        fb = self.rule.feedback(layer, self.stream)
        layer.last_b = fb
        return fb

    def feedback(self, name: str) -> torch.Tensor:
        """The layer's feedback matrix B as of now (a copy).

        For brsf this is the B of the most recent backward pass; before any, a sample from a side stream, so
        reading it never moves the training stream.
        """
        layer = self._layer(name)
        if self.rule.exact:
            return layer.weight.detach().clone()
        if not self.rule.random_per_pass:
            fb = self.rule.feedback(layer, self.stream)
        elif layer.last_b is not None:
            fb = layer.last_b
        else:
            fb = self.rule.feedback(layer, UniformStream(self.seed + 1_000_003))
        return fb.materialize().detach().clone()

    def feedback_matrices(self) -> dict[str, torch.Tensor]:
        return {name: self.feedback(name) for name in self.layers}

    def diagnostics(self) -> list[dict[str, Any]]:
        """Per layer: angle in degrees between vec(B) and vec(W), and norm(B) / norm(W), from the B actually used."""
        rows = []
        for name, layer in self.layers.items():
            w = layer.weight.detach().double().flatten()
            b = self.feedback(name).double().flatten()
            nw, nb = w.norm().item(), b.norm().item()
            if nw > 0 and nb > 0:
                # 2 atan2(|u - v|, |u + v|) of the unit vectors: exact near 0 and 180 degrees, unlike acos.
                u, v = w / nw, b / nb
                angle = math.degrees(2 * math.atan2((u - v).norm().item(), (u + v).norm().item()))
            else:
                angle = float("nan")
            rows.append({"layer": name, "angle_deg": angle, "norm_ratio": nb / nw if nw > 0 else float("nan")})
        return rows

    def _layer(self, name: str) -> Layer:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"no layer {name!r} under rule {self.name!r}; layers: {', '.join(self.layers)}") from None

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so `torch.load(..., weights_only=True)` reads it back."""
        return {
            "rule": self.name,
            "seed": self.seed,
            "layers": {
                n: {k: v.detach().cpu().clone() for k, v in layer.state.items()} for n, layer in self.layers.items()
            },
            "stream": self.stream.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rule") != self.name:
            raise ValueError(f"rule state is for {state.get('rule')!r}, but this handle runs {self.name!r}")
        saved = state.get("layers", {})
        if set(saved) != set(self.layers):
            missing, extra = sorted(set(self.layers) - set(saved)), sorted(set(saved) - set(self.layers))
            raise ValueError(f"rule state does not match the model's layers (missing {missing}, unexpected {extra})")
        for name, tensors in saved.items():
            layer = self.layers[name]
            for key, value in tensors.items():
                if key in layer.state and layer.state[key].shape != value.shape:
                    raise ValueError(
                        f"rule state {name}.{key} has shape {tuple(value.shape)}, the model needs "
                        f"{tuple(layer.state[key].shape)}"
                    )
                layer.state[key] = value.clone()
            layer.clear_derived()
        self.seed = int(state.get("seed", self.seed))
        if state.get("stream") is not None:
            self.stream.load_state_dict(state["stream"])


def attach(model: nn.Module, name: str, seed: int = 0, state: dict[str, Any] | None = None) -> RuleHandle:
    """Run `model`'s Conv/Linear layers under learning rule `name`; returns the handle.

    Every nn.Conv1d/2d/3d and nn.Linear (head included) sends its error down with the rule's B; weight and bias
    gradients stay exact; every other module keeps exact gradients. `seed` fixes the rule's random draws; `state`
    (from `handle.state_dict()`) restores them exactly, as saved with a checkpoint.
    """
    rule = get_rule(name)()
    if getattr(model, _ATTR, None) is not None:
        running = getattr(model, _ATTR).name
        raise RuntimeError(f"{type(model).__name__} already runs rule {running!r}; detach() it first")
    layers = [
        Layer(n, m) for n, m in model.named_modules()
        if isinstance(m, FEEDBACK_LAYER_TYPES) and getattr(m, "weight", None) is not None
    ]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv1d/2d/3d or nn.Linear layer, so there is nothing for rule "
            f"{name!r} to act on"
        )
    generator = torch.Generator().manual_seed(int(seed))
    for layer in layers:
        rule.init_layer(layer, generator)
    handle = RuleHandle(model, rule, layers, seed)
    if state is not None:
        handle.load_state_dict(state)
    setattr(model, _ATTR, handle)
    return handle


def handle_of(model: nn.Module) -> RuleHandle | None:
    """The rule handle attached to `model`, if any."""
    return getattr(model, _ATTR, None)
