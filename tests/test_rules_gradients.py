"""Every rule's gradients, layer by layer, against independent references (docs/protocol.md, "Learning rules")."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import rules

RULES = ["bp", "fa", "usf", "frsf", "brsf"]
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class SmallNet(nn.Module):
    """Conv + BatchNorm + the awkward geometries: stride, dilation, groups, no bias, padding modes, 'same'."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 12, 4, padding="same", padding_mode="reflect")  # asymmetric 'same'
        self.c4 = nn.Conv2d(12, 12, 3, padding=1, padding_mode="circular", groups=3)
        self.c5 = nn.Conv2d(12, 6, 2, padding="same")  # even kernel, zero padding: asymmetric
        self.c6 = nn.Conv2d(6, 6, 3, padding="valid", padding_mode="replicate")
        self.fc = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.c3(x))
        x = F.relu(self.c4(x))
        x = F.relu(self.c5(x))
        x = self.c6(x)
        return self.fc(x.flatten(1))


def no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


class Recorder:
    """Records, for every Conv/Linear, its input, the error arriving at its output, and the error it sends down.

    Registered before the rule is attached, so its pre-hook runs first: the layer's input becomes a private clone
    whose gradient is exactly what this layer sends down (other consumers of the same tensor are not mixed in).
    """

    def __init__(self, model: nn.Module) -> None:
        self.inputs, self.grad_out, self.grad_in = {}, {}, {}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, LAYER_TYPES):
                self.handles.append(m.register_forward_pre_hook(self._pre(name)))

    def _pre(self, name):
        def hook(module, args):
            x = args[0]
            if not x.requires_grad:
                self.inputs[name] = x.detach()
                return None
            x = x.clone()
            self.inputs[name] = x.detach()
            x.register_hook(lambda g: self.grad_in.__setitem__(name, g))
            return (x,)
        return hook

    def watch_outputs(self, model: nn.Module) -> None:
        """Registered after attach, so it sees the layer's final output."""
        for name, m in model.named_modules():
            if isinstance(m, LAYER_TYPES):
                def hook(module, args, out, name=name):
                    if out.requires_grad:
                        out.register_hook(lambda g: self.grad_out.__setitem__(name, g))
                self.handles.append(m.register_forward_hook(hook))


def reference_conv(m: nn.Module, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return F.linear(x, w, bias)
    return m._conv_forward(x, w, bias)


def check_layers(model: nn.Module, handle: rules.RuleHandle, rec: Recorder, check_input: bool = True) -> int:
    checked = 0
    for name, m in model.named_modules():
        if not isinstance(m, LAYER_TYPES) or name not in rec.grad_out:
            continue
        x, g = rec.inputs[name], rec.grad_out[name]
        w = m.weight.detach().clone().requires_grad_(True)
        b = m.bias.detach().clone().requires_grad_(True) if m.bias is not None else None
        ref = torch.autograd.grad(reference_conv(m, x, w, b), [t for t in (w, b) if t is not None], g)
        torch.testing.assert_close(m.weight.grad, ref[0], rtol=1e-5, atol=1e-6, msg=f"{name} weight grad")
        if b is not None:
            torch.testing.assert_close(m.bias.grad, ref[1], rtol=1e-5, atol=1e-6, msg=f"{name} bias grad")
        if check_input and name in rec.grad_in:
            fb = handle.feedback(name)
            xr = x.clone().requires_grad_(True)
            (gx_ref,) = torch.autograd.grad(reference_conv(m, xr, fb, None), xr, g)
            # B may be applied as (scale, matrix): rounding differs by a few ulps of the largest entry
            atol = 1e-6 * max(1.0, gx_ref.abs().max().item())
            torch.testing.assert_close(rec.grad_in[name], gx_ref, rtol=1e-5, atol=atol, msg=f"{name} error sent")
        checked += 1
    return checked


def run_and_check(model: nn.Module, rule: str, x: torch.Tensor) -> int:
    model = no_inplace(model)
    rec = Recorder(model)
    handle = rules.attach(model, rule, seed=3)
    rec.watch_outputs(model)
    out = model(x)
    model.zero_grad(set_to_none=True)
    out.square().sum().backward()
    return check_layers(model, handle, rec)


# A layer's backward runs as autograd's own node with B handed in ("native"), or, when the forward ran under the
# user's saved-tensor hooks (CPU offload, activation checkpointing), through rules/backward.py ("explicit"): both must
# give the same gradients for every geometry.
PATHS = {"native": contextlib.nullcontext, "explicit": torch.autograd.graph.save_on_cpu}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rule", RULES)
def test_small_net_every_layer(rule, path):
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    with PATHS[path]():
        assert run_and_check(SmallNet(), rule, x) == 7


@pytest.mark.parametrize("rule", RULES)
def test_resnet18_every_layer(rule):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert run_and_check(torchvision.models.resnet18(num_classes=10), rule, x) == 21


@pytest.mark.parametrize("rule", RULES)
def test_alexnet_every_layer(rule):
    x = torch.rand(2, 3, 63, 63, requires_grad=True)
    model = torchvision.models.alexnet(num_classes=10).eval()  # eval: no dropout, so the references line up
    assert run_and_check(model, rule, x) == 8


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES)
def test_vgg16_every_layer(rule):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model = torchvision.models.vgg16(num_classes=10).eval()
    assert run_and_check(model, rule, x) == 16


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shape", [(7,), (5, 7), (3, 5, 7), (2, 3, 4, 7)])
def test_linear_any_rank(rule, shape, path):
    lin = nn.Linear(7, 4)
    x = torch.randn(*shape, requires_grad=True)
    handle = rules.attach(lin, rule, seed=1)
    with PATHS[path]():
        y = lin(x)
    g = torch.randn_like(y)
    y.backward(g)
    b = handle.feedback("")
    torch.testing.assert_close(x.grad, g @ b)
    g2, x2 = g.reshape(-1, 4), x.detach().reshape(-1, 7)
    torch.testing.assert_close(lin.weight.grad, g2.t() @ x2)
    torch.testing.assert_close(lin.bias.grad, g2.sum(0))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rule", RULES)
def test_conv1d_and_conv3d(rule, path):
    for conv, x in [
        (nn.Conv1d(3, 4, 3, stride=2, padding=1), torch.randn(2, 3, 9)),
        (nn.Conv1d(3, 4, 4, padding="same", padding_mode="reflect"), torch.randn(2, 3, 9)),
        (nn.Conv1d(3, 4, 3, padding="valid"), torch.randn(2, 3, 9)),
        (nn.Conv1d(3, 4, 3, padding="same", dilation=2), torch.randn(2, 3, 9)),  # symmetric 'same'
        (nn.Conv3d(2, 4, 3, padding=1, groups=2, bias=False), torch.randn(1, 2, 4, 5, 5)),
        (nn.Conv3d(2, 4, (2, 3, 2), padding="same", dilation=(1, 2, 1)), torch.randn(1, 2, 4, 6, 5)),
    ]:
        x.requires_grad_(True)
        handle = rules.attach(conv, rule, seed=2)
        with PATHS[path]():
            y = conv(x)
        g = torch.randn_like(y)
        y.backward(g)
        xr = x.detach().clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(conv._conv_forward(xr, handle.feedback(""), None), xr, g)
        torch.testing.assert_close(x.grad, ref)


@pytest.mark.parametrize(
    "factory,size",
    [(SmallNet, 16), (lambda: torchvision.models.resnet18(num_classes=10), 32),
     (lambda: torchvision.models.alexnet(num_classes=10).eval(), 63)],
)
def test_bp_is_bit_identical_to_plain_autograd(factory, size):
    torch.manual_seed(1)
    plain = factory()
    ruled = copy.deepcopy(plain)
    rules.attach(ruled, "bp")
    x = torch.rand(2, 3, size, size)
    for model in (plain, ruled):
        xi = x.clone().requires_grad_(True)
        model(xi).logsumexp(1).sum().backward()
        model.input_grad = xi.grad
    assert torch.equal(plain.input_grad, ruled.input_grad)
    for (n, p), (_, q) in zip(plain.named_parameters(), ruled.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n


def test_input_gradient_only_equals_the_full_backward():
    # that no weight gradient is computed on this path is checked by test_attack_gradient_skips_weight_gradients
    model = torchvision.models.resnet18(num_classes=10).eval()
    rules.attach(model, "frsf", seed=0)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)  # a leaf, as in torchattacks
    (gx,) = torch.autograd.grad(F.cross_entropy(model(x), torch.tensor([1, 2])), x)
    assert gx.abs().sum() > 0
    x2 = x.detach().clone().requires_grad_(True)
    F.cross_entropy(model(x2), torch.tensor([1, 2])).backward()
    torch.testing.assert_close(gx, x2.grad)


@pytest.mark.parametrize("rule", ["usf", "frsf", "fa", "brsf"])
def test_rule_changes_the_input_gradient(rule):
    torch.manual_seed(0)
    model = SmallNet()
    x = torch.randn(2, 3, 16, 16)
    xa = x.clone().requires_grad_(True)
    model(xa).sum().backward()
    rules.attach(model, rule)
    xb = x.clone().requires_grad_(True)
    model(xb).sum().backward()
    cos = F.cosine_similarity(xa.grad.flatten(), xb.grad.flatten(), dim=0)
    assert cos < 0.999


def test_bfloat16_autocast_on_cpu():
    model = SmallNet()
    rules.attach(model, "frsf")
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in model.parameters())


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_autocast_sends_the_rule_error_not_the_exact_one(rule):
    """Autocast saves a bf16 copy of W; the backward must get B in bf16, not that copy (which would be BP)."""
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])

    def input_grad(name: str | None, amp: bool, frozen: bool = False) -> torch.Tensor:
        m = copy.deepcopy(base).requires_grad_(not frozen)  # frozen: the cast copy has no graph to recognise it by
        if name:
            rules.attach(m, name, seed=0)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(xi)
        F.cross_entropy(out.float(), y).backward()
        return xi.grad.flatten()

    amp, bp = input_grad(rule, True), input_grad(None, True)
    assert F.cosine_similarity(amp, bp, dim=0) < 0.5
    if rule != "brsf":  # brsf's B is a fresh draw in each run
        exact_precision = input_grad(rule, False)
        assert F.cosine_similarity(amp, exact_precision, dim=0) > 0.95
        assert F.cosine_similarity(input_grad(rule, True, frozen=True), exact_precision, dim=0) > 0.95


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf"])
def test_channels_last_gives_the_same_rule_gradients(rule):
    """GPU users fine-tune with channels-last tensors (make gpu-check measures it): the memory layout must not
    change which feedback the backward uses, for the input or for the weights."""
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])

    def grads(layout: torch.memory_format) -> list[torch.Tensor]:
        m = copy.deepcopy(base).to(memory_format=layout)
        rules.attach(m, rule, seed=0)
        xi = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        F.cross_entropy(m(xi), y).backward()
        return [xi.grad, m.conv1.weight.grad, m.layer4[1].conv2.weight.grad]

    for a, b in zip(grads(torch.channels_last), grads(torch.contiguous_format), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    bp_model = copy.deepcopy(base)
    xb = x.clone().requires_grad_(True)
    F.cross_entropy(bp_model(xb), y).backward()
    assert F.cosine_similarity(xb.grad.flatten(), grads(torch.channels_last)[0].flatten(), dim=0) < 0.5


class ConvBackwardCalls(TorchDispatchMode):
    """Every aten.convolution_backward the backward pass runs (native nodes included): its output mask and weight."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[bool, ...], torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.calls.append((tuple(args[10]), args[2]))
        return func(*args, **(kwargs or {}))


def test_attack_gradient_skips_weight_gradients():
    """An attack's autograd.grad w.r.t. the image pays for no weight gradient (BioTorch's 2.4x), and every layer's
    single kernel call gets B where plain autograd would pass W."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    handle = rules.attach(model, "usf")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    with ConvBackwardCalls() as spy:
        torch.autograd.grad(F.cross_entropy(model(x), torch.tensor([0, 1])), x)
    assert len(spy.calls) == 20 and all(mask == (True, False, False) for mask, _ in spy.calls)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    feedback = [handle.feedback(name) for name in reversed(convs)]  # the backward visits them last layer first
    for (_, weight), b in zip(spy.calls, feedback, strict=True):
        assert torch.equal(weight, b)
    with ConvBackwardCalls() as spy:
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert len(spy.calls) == 20 and all(mask[:2] == (True, True) for mask, _ in spy.calls)


@pytest.mark.parametrize("rule", ["usf", "frsf", "fa"])
def test_checkpointing_and_offloading_give_the_same_gradients(rule):
    """Under the user's saved-tensor hooks (activation checkpointing, CPU offload) the rule takes its explicit path."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])

    def grads(mode: str) -> list[torch.Tensor]:
        m = copy.deepcopy(base)
        rules.attach(m, rule, seed=1)
        xi = x.clone().requires_grad_(True)
        if mode == "offload":
            with torch.autograd.graph.save_on_cpu():
                out = m(xi)
        elif mode == "plain":
            out = m(xi)
        else:
            h = m.maxpool(m.relu(m.bn1(m.conv1(xi))))
            h = checkpoint(m.layer1, h, use_reentrant=mode == "reentrant")
            h = checkpoint(m.layer2, h, use_reentrant=False)
            out = m.fc(torch.flatten(m.avgpool(m.layer4(m.layer3(h))), 1))
        F.cross_entropy(out, y).backward()
        return [xi.grad] + [p.grad for p in m.parameters()]

    ref = grads("plain")
    for mode in ["offload", "checkpoint", "reentrant"]:
        for a, b in zip(ref, grads(mode), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=mode)


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_without_native_kernels_the_same_feedback_and_the_same_checks(rule, monkeypatch):
    """SIGSYM_NO_NATIVE (no compiler, or switched off): usf/frsf rebuild B with torch and brsf draws with numpy.
    Every layer still passes the reference checks, and B is bit for bit the native path's, through a weight update
    that flips signs (usf/frsf keep B current through the sign record natively) and a fresh draw (brsf)."""
    from rules import kernels

    def steps(native: bool) -> dict[str, torch.Tensor]:
        if native:
            monkeypatch.delenv("SIGSYM_NO_NATIVE", raising=False)
        else:
            monkeypatch.setenv("SIGSYM_NO_NATIVE", "1")
        model = no_inplace(torchvision.models.resnet18(num_classes=10))
        handle = rules.attach(model, rule, seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # large: many weights change sign
        for _ in range(2):
            opt.zero_grad()
            model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).square().sum().backward()
            opt.step()
        model(torch.rand(2, 3, 32, 32)).sum().backward()  # B as the latest backward used it
        return {name: b.clone() for name, b in handle.feedback_matrices().items()}

    torch.manual_seed(0)
    native = steps(True)
    torch.manual_seed(0)
    fallback = steps(False)
    assert kernels._library() is None  # the switch took
    assert native.keys() == fallback.keys() and len(native) == 21
    for name in native:
        assert torch.equal(native[name], fallback[name]), name
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert run_and_check(torchvision.models.resnet18(num_classes=10), rule, x) == 21
    assert run_and_check(SmallNet(), rule, torch.randn(4, 3, 16, 16, requires_grad=True)) == 7


def test_attack_gradient_on_the_explicit_path_skips_weight_gradients():
    """Under saved-tensor hooks the explicit backward (rules/backward.py) asks each kernel call for the input
    gradient only, as the native path does: an attack pays for no weight gradient there either."""
    model = no_inplace(SmallNet()).eval()
    handle = rules.attach(model, "usf")
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with torch.autograd.graph.save_on_cpu():
        out = model(x)
    with ConvBackwardCalls() as spy:
        torch.autograd.grad(out.sum(), x)
    assert len(spy.calls) == 6 and all(mask == (True, False, False) for mask, _ in spy.calls)
    assert all(torch.equal(w, handle.feedback(f"c{6 - i}")) for i, (_, w) in enumerate(spy.calls))


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf"])
def test_explicit_path_weight_gradient_alone_equals_the_full_backward(rule):
    """autograd.grad w.r.t. a weight only (the input's gradient not asked for): the explicit path computes that
    weight gradient from W's shape alone, and it equals the one a full backward gives."""
    model = no_inplace(SmallNet())
    rules.attach(model, rule, seed=0)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with torch.autograd.graph.save_on_cpu():
        loss = model(x).square().sum()
    (alone,) = torch.autograd.grad(loss, [model.c4.weight], retain_graph=True)
    loss.backward()
    torch.testing.assert_close(alone, model.c4.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["conv", "linear", "linear-3d", "bf16-autocast", "linear-bf16-autocast",
                                  "weight-in-a-larger-storage", "linear-weight-in-a-larger-storage",
                                  "conv1d-unbatched"])
def test_ordinary_layers_ride_on_autograds_own_node(case):
    """The rule takes the explicit path only where it must: a plain Conv/Linear output keeps PyTorch's native node
    (ConvolutionBackward0, AddmmBackward0, ...), whose saved weight unpacks as B, and the error it sends down is
    computed with B."""
    torch.manual_seed(0)
    if case.startswith("linear"):
        layer, x = nn.Linear(6, 4), torch.randn(*((3, 5, 6) if case == "linear-3d" else (5, 6)), requires_grad=True)
    elif case == "conv1d-unbatched":  # autograd squeezes around the batched kernel call
        layer, x = nn.Conv1d(3, 4, 3), torch.randn(3, 9, requires_grad=True)
    else:
        layer, x = nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 6, 6, requires_grad=True)
    if case == "weight-in-a-larger-storage":
        layer.weight = nn.Parameter(torch.randn(10, 3, 3, 3)[3:7])
        assert layer.weight.storage_offset() == 81
    if case == "linear-weight-in-a-larger-storage":  # and a transposed view of it is what addmm saves
        layer.weight = nn.Parameter(torch.randn(30, 6)[10:14])
    handle = rules.attach(layer, "usf")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.endswith("bf16-autocast")):
        y = layer(x)
    assert "RuleLayer" not in type(y.grad_fn).__name__, type(y.grad_fn).__name__
    g = torch.randn_like(y)
    y.backward(g)
    b = handle.feedback("").to(y.dtype)
    xr = x.detach().clone().to(y.dtype).requires_grad_(True)
    (expected,) = torch.autograd.grad(reference_conv(layer, xr, b, None), xr, g)
    tol = 2e-2 if case.endswith("bf16-autocast") else 1e-6
    torch.testing.assert_close(x.grad.to(y.dtype), expected, rtol=tol, atol=tol)


def test_a_forward_hook_of_the_users_before_attach_keeps_the_rule():
    """An output another hook changed is not the plain Conv graph the weight slot is found in: the rule takes the
    explicit path there, and the error sent down still uses B."""
    conv = nn.Conv2d(3, 4, 3)
    conv.register_forward_hook(lambda module, args, out: out * 2.0)
    handle = rules.attach(conv, "usf")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)
    xr = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(2.0 * conv._conv_forward(xr, handle.feedback(""), None), xr, g)
    torch.testing.assert_close(x.grad, expected)


def test_a_layer_called_with_keyword_arguments_runs():
    lin = nn.Linear(5, 3)
    rules.attach(lin, "usf")
    x = torch.randn(4, 5, requires_grad=True)
    lin(input=x).sum().backward()  # hooks see no positional input: plain autograd for this call
    assert x.grad is not None
