"""Attaching a rule to a model with module hooks.

One forward hook per Conv/Linear. When the layer's input needs a gradient, the hook finds the autograd node that
PyTorch's own forward just built for the layer (ConvolutionBackward0, or AddmmBackward0 / MmBackward0 for nn.Linear)
and registers saved-tensor hooks on the weight that node saved: when the backward unpacks it, it receives B instead.
The native node then makes exactly the kernel call backpropagation makes, with the output mask the running backward
pass needs, so weight and bias gradients are autograd's own, the error sent down is computed with B, nothing is
computed twice, and an attack's d loss / d input computes no weight gradient. There is no Python on the backward
path but the unpack hook, one call per layer.

Deterministic rules (fa, usf, frsf) bring B up to date in the same hook, right after the layer's forward has read W;
brsf draws B when the backward unpacks it, once per backward pass through the layer.

Where the weight slot cannot take hooks (the forward ran under the user's saved-tensor hooks: activation
checkpointing, CPU offload) or is not the module's own weight, the output is rewired through `_RuleLayer`, an
identity whose backward makes the same kernel call explicitly (rules/backward.py).
Layers whose input needs no gradient (the image batch in training) and every forward without grad mode (evaluation)
are left to plain autograd, so they cost exactly what they cost without a rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rules.backward import layer_backward
from rules.base import FEEDBACK_LAYER_TYPES, Layer, Rule
from rules.registry import get_rule
from rules.streams import UniformStream

_ATTR = "_sigsym_rule_handle"

# The native node that holds a Conv/Linear layer's weight for its input gradient: the saved slot, and which of the
# node's inputs (next_functions) is the weight.
_WEIGHT_SLOTS = {"ConvolutionBackward0": ("_raw_saved_weight", 1), "AddmmBackward0": ("_raw_saved_mat2", 2),
                 "MmBackward0": ("_raw_saved_mat2", 1)}
# Nodes nn.Linear may put after it: the reshapes around >2-D and 1-D inputs, and the bias add of the matmul path.
_PASS_THROUGH = {"ViewBackward0", "UnsafeViewBackward0", "AddBackward0"}


def _weight_slot(out: torch.Tensor, weight: torch.Tensor) -> tuple[Any, bool] | None:
    """(the saved-tensor slot of the node that computed `out` from `weight`, whether it saved autocast's cast copy
    of the weight rather than the weight itself), or None where the graph is not the plain Conv/Linear one."""
    node = out.grad_fn
    for _ in range(4):
        if node is None:
            return None
        kind = type(node).__name__
        if kind in _WEIGHT_SLOTS:
            break
        if kind not in _PASS_THROUGH and not kind.startswith("SqueezeBackward"):
            return None
        node = node.next_functions[0][0]
    else:
        return None
    slot, index = _WEIGHT_SLOTS[kind]
    # The weight's own edge says whether the node saved autocast's copy: TBackward0 (Linear), then ToCopyBackward0.
    edge, cast = node.next_functions[index][0], False
    if edge is not None and type(edge).__name__ == "TBackward0":
        edge = edge.next_functions[0][0]
    if edge is not None and type(edge).__name__ == "ToCopyBackward0":
        edge, cast = edge.next_functions[0][0], True
        if edge is None or getattr(edge, "variable", None) is not weight:
            return None  # a copy of something else
    return getattr(node, slot, None), cast


class _SavedWeight:
    """Pack/unpack hooks for the weight a native node saved: the backward unpacks B (same view, same dtype).

    Autograd hands the pack hook an alias of the saved tensor (no Parameter, no view base), so what it is a view of
    is read from its storage: W's own storage, or (autocast) a fresh cast copy laid out like W.
    """

    __slots__ = ("handle", "layer", "cast", "tensor", "version", "origin")

    def __init__(self, handle: RuleHandle, layer: Layer, cast: bool) -> None:
        self.handle, self.layer, self.cast = handle, layer, cast
        self.origin: int | None = None  # storage offset of the start of W (or of its copy) in the saved storage

    def pack(self, t: torch.Tensor) -> _SavedWeight:
        w = self.layer.weight
        self.tensor, self.version = t, t._version
        if not self.cast and t.dtype == w.dtype and t.untyped_storage().data_ptr() == w.untyped_storage().data_ptr():
            self.origin = w.storage_offset()
        elif self.cast and t.dtype != w.dtype and t.untyped_storage().nbytes() == w.numel() * t.element_size():
            self.origin = 0
        return self

    def unpack(self, _: object) -> torch.Tensor:
        t, w = self.tensor, self.layer.weight
        if self.origin is None:  # never reached: the hook rewires such a layer through _RuleLayer
            return t
        if t._version != self.version:  # what autograd checks itself for a saved tensor without hooks
            raise RuntimeError(
                f"the weight of layer {self.layer.name!r} was modified in place after the forward pass that the "
                f"backward pass runs through (rule {self.handle.name!r}); step the optimizer after backward()"
            )
        b = self.handle._feedback_for_backward(self.layer)
        if b.stride() != w.stride():
            b = torch.empty_like(w).copy_(b)
        if b.dtype != t.dtype:
            b = b.to(t.dtype)
        if t.shape == b.shape and t.stride() == b.stride() and t.storage_offset() == self.origin:
            return b
        return b.as_strided(t.shape, t.stride(), b.storage_offset() + t.storage_offset() - self.origin)


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
        b = ctx.owner._feedback_for_backward(ctx.layer) if need_x else None
        gx, gw, gb = layer_backward(g, x, w, b, ctx.layer.module, need_x, need_w, need_b)
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
        # First among the module's forward hooks: a hook of the user's that changes the output runs after ours, on
        # the output we return, so its change stays in the gradient (after it, the graph is not the layer's own).
        self._hooks.append(layer.module.register_forward_hook(partial(self._wire, layer), prepend=True))

    def _wire(self, layer: Layer, module: nn.Module, args: tuple, out: Any) -> torch.Tensor | None:
        if self._exact_depth or not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return None  # exact() block, or no graph (evaluation): plain autograd
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return None  # nothing is sent below this layer: its native node computes the exact weight gradient
        found = _weight_slot(out, module.weight)
        if found is not None and found[0] is not None:
            saved = _SavedWeight(self, layer, cast=found[1])
            try:
                found[0].register_hooks(saved.pack, saved.unpack)
            except RuntimeError:  # the slot already has the user's saved-tensor hooks
                pass
            else:
                if saved.origin is not None:
                    if not self.rule.random_per_pass:
                        self.rule.feedback(layer, self.stream)  # W was just read by the forward: partly in cache
                    return None
        # The explicit path. The forward ran once, in the module; its native node is dropped unused.
        detached = out.detach()
        if detached._is_view():  # e.g. nn.Linear on a 1-D input; autograd forbids rewiring a view in place
            detached = detached.clone()
        return _RuleLayer.apply(detached, _edge(x), _edge(module.weight), _edge(module.bias), self, layer)

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
    def _feedback_for_backward(self, layer: Layer) -> torch.Tensor:
        b = self.rule.feedback(layer, self.stream)
        layer.last_b = b
        return b

    def feedback(self, name: str) -> torch.Tensor:
        """The layer's feedback matrix B as of now (a copy).

        For brsf this is the B of the most recent backward pass; before any, a sample from a side stream, so
        reading it never moves the training stream.
        """
        layer = self._layer(name)
        if self.rule.exact:
            return layer.weight.detach().clone()
        if not self.rule.random_per_pass:
            b = self.rule.feedback(layer, self.stream)
        elif layer.last_b is not None:
            b = layer.last_b
        else:
            b = self.rule.feedback(layer, UniformStream(self.seed + 1_000_003))
        return b.detach().clone()

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


def attach(model: nn.Module, name: str | type[Rule], seed: int = 0, state: dict[str, Any] | None = None
           ) -> RuleHandle:
    """Run `model`'s Conv/Linear layers under learning rule `name` (a registered name, or a `Rule` subclass not
    registered, such as a benchmark's control); returns the handle.

    Every nn.Conv1d/2d/3d and nn.Linear (head included) sends its error down with the rule's B; weight and bias
    gradients stay exact; every other module keeps exact gradients. `seed` fixes the rule's random draws; `state`
    (from `handle.state_dict()`) restores them exactly, as saved with a checkpoint.
    """
    rule = get_rule(name)() if isinstance(name, str) else name()
    name = rule.name
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
