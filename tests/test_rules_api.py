"""What each rule's B is, how the handle behaves, and the rule state in checkpoints."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rules
from rules.base import xavier_bound, xavier_std
from rules.streams import UniformStream


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 8 * 8, 5),
    )


def fwd_bwd(model: nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 8, 8, generator=g, requires_grad=True)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    return x.grad


def test_unknown_rule_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown learning rule 'sf'.*bp, brsf, fa, frsf, usf"):
        rules.attach(net(), "sf")


def test_model_without_layers_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^Sequential has no nn.Conv1d/2d/3d or nn.Linear layer, so there is nothing "
                       r"for rule 'usf' to act on$"):
        rules.attach(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "usf")


def test_double_attach_and_deepcopy_are_refused():
    model = net()
    h = rules.attach(model, "frsf")
    with pytest.raises(RuntimeError, match=r"^Sequential already runs rule 'frsf'; detach\(\) it first$"):
        rules.attach(model, "usf")
    with pytest.raises(TypeError, match="cannot deepcopy"):
        copy.deepcopy(model)
    h.detach()
    rules.attach(model, "usf")  # fine once detached


def test_attach_takes_an_unregistered_rule_class_and_names_it_in_errors():
    class Halved(rules.Rule):  # a rule being prototyped: B = W / 2, never registered
        name = "halved"

        def feedback(self, layer, stream=None):
            return layer.weight.detach() / 2

    model = net()
    h = rules.attach(model, Halved)
    assert h.name == "halved" and "halved" not in rules.available_rules()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    (g_rule,) = torch.autograd.grad(model(x).sum(), x)
    h.detach()
    (g_bp,) = torch.autograd.grad(model(x).sum(), x)
    # the backward is linear in the error and the forward is unchanged, so halving B in three layers is 1/8 of BP's
    torch.testing.assert_close(g_rule, g_bp / 8)
    with pytest.raises(ValueError, match=r"nothing for rule 'halved' to act on$"):
        rules.attach(nn.Sequential(nn.ReLU()), Halved)


def test_usf_is_scaled_sign():
    model = net()
    h = rules.attach(model, "usf")
    for name, layer in h.layers.items():
        w = layer.weight.detach()
        assert torch.equal(h.feedback(name), torch.sign(w) * xavier_std(w))
    # the scale itself, by hand: Conv2d(8, 8, 3) has fan_in = fan_out = 72, so sqrt(2 / (72 + 72))
    assert h.feedback("3").abs().unique().tolist() == pytest.approx([(2 / 144) ** 0.5])


def test_frsf_changes_only_with_the_sign_of_w_and_survives_a_checkpoint():
    model = net()
    h = rules.attach(model, "frsf", seed=7)
    w = model[3].weight
    before = h.feedback("3")
    with torch.no_grad():
        w.mul_(3.0)  # magnitudes change, signs do not
    assert torch.equal(h.feedback("3"), before)
    with torch.no_grad():
        w[0].neg_()  # flip the signs of one output channel
    after = h.feedback("3")
    assert torch.equal(after[0], -before[0]) and torch.equal(after[1:], before[1:])
    bound = xavier_bound(w)
    assert bound == pytest.approx((6 / 144) ** 0.5)  # Xavier-uniform's bound for fan_in = fan_out = 72, by hand
    assert (after.abs() <= bound).all() and (after.abs() > 0).all()

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "rule": h.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = net()
    clone.load_state_dict(ckpt["model"])
    h2 = rules.attach(clone, "frsf", seed=999, state=ckpt["rule"])  # the saved M wins over the seed
    for name in h.layers:
        assert torch.equal(h2.feedback(name), h.feedback(name))
    torch.testing.assert_close(fwd_bwd(clone), fwd_bwd(model), rtol=0, atol=0)


def test_fa_is_fixed_and_independent_of_w():
    a, b = net(), net()  # different weights
    ha, hb = rules.attach(a, "fa", seed=5), rules.attach(b, "fa", seed=5)
    for name in ha.layers:
        assert torch.equal(ha.feedback(name), hb.feedback(name))
    before = ha.feedback("6")
    opt = torch.optim.Adam(a.parameters(), lr=1e-2)
    fwd_bwd(a)
    opt.step()
    assert torch.equal(ha.feedback("6"), before)
    w = a[6].weight.detach().flatten()
    assert abs(F.cosine_similarity(w, before.flatten(), dim=0)) < 0.2


def test_brsf_redraws_every_pass_with_the_signs_of_w():
    model = net()
    h = rules.attach(model, "brsf", seed=1)
    fwd_bwd(model)
    b1 = h.feedback("3")
    fwd_bwd(model)
    b2 = h.feedback("3")
    assert not torch.equal(b1, b2)
    w = model[3].weight.detach()
    for b in (b1, b2):
        assert torch.equal(torch.sign(b), torch.sign(w))
        assert (b.abs() <= xavier_bound(w)).all()


def test_brsf_reads_sign_codes_only_while_w_stays_fixed(monkeypatch):
    # passes on fixed weights (an attack) draw from 1-byte sign codes; a weight update must drop them
    from rules.base import Layer
    from rules.kernels import native_fill_codes

    torch.manual_seed(0)
    model = net()
    reference = copy.deepcopy(model)
    h = rules.attach(model, "brsf", seed=4)
    layer = h.layers["3"]
    fwd_bwd(model, seed=0)
    assert layer.derived["codes"][1] is None  # one pass is no evidence that W stays fixed
    fwd_bwd(model, seed=1)
    if native_fill_codes() is not None:
        assert torch.equal(layer.derived["codes"][1], torch.sign(layer.weight.detach()).to(torch.int8))
    with torch.no_grad():
        layer.weight.neg_()  # every sign flips: B drawn from stale codes would point the wrong way everywhere
    fwd_bwd(model, seed=2)
    assert layer.derived["codes"][1] is None
    assert torch.equal(torch.sign(h.feedback("3")), torch.sign(layer.weight.detach()))
    grads = [fwd_bwd(model, seed=s) for s in (3, 4)]

    monkeypatch.setattr(Layer, "fixed_sign_codes", lambda self: None)  # every draw reads W
    hr = rules.attach(reference, "brsf", seed=4)
    fwd_bwd(reference, seed=0)
    fwd_bwd(reference, seed=1)
    with torch.no_grad():
        hr.layers["3"].weight.neg_()
    fwd_bwd(reference, seed=2)
    for s, g in zip((3, 4), grads, strict=True):
        assert torch.equal(fwd_bwd(reference, seed=s), g)


def test_zero_weights_send_no_error_under_sign_rules():
    for rule in ("usf", "frsf", "brsf"):
        model = net()
        with torch.no_grad():
            model[3].weight[:, :2] = 0.0
        h = rules.attach(model, rule)
        fwd_bwd(model)
        assert (h.feedback("3")[:, :2] == 0).all(), rule


def test_brsf_is_reproducible_and_its_stream_resumes_from_a_checkpoint():
    def run(state=None, steps=3):
        torch.manual_seed(0)
        model = net()
        h = rules.attach(model, "brsf", seed=11, state=state)
        grads = [fwd_bwd(model, seed=s) for s in range(steps)]
        return h, grads

    h1, g1 = run()
    _, g2 = run()
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)
    # stop after one pass, save, resume: the next passes must equal the uninterrupted run's
    torch.manual_seed(0)
    model = net()
    h = rules.attach(model, "brsf", seed=11)
    fwd_bwd(model, seed=0)
    buf = io.BytesIO()
    torch.save(h.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    h.detach()
    rules.attach(model, "brsf", seed=0, state=state)
    assert torch.equal(fwd_bwd(model, seed=1), g1[1])
    assert torch.equal(fwd_bwd(model, seed=2), g1[2])


def test_brsf_magnitudes_are_uniform():
    stream = UniformStream(3)
    out = torch.empty(2_000_000)
    stream.fill_signed_(out, torch.ones_like(out)).mul_(UniformStream.unit_scale)
    assert out.min() > 0 and out.max() < 1
    assert abs(out.mean().item() - 0.5) < 2e-3
    assert abs(out.var().item() - 1 / 12) < 1e-3
    hist = torch.histc(out, bins=10, min=0, max=1) / out.numel()
    assert (hist - 0.1).abs().max() < 3e-3


def test_detach_and_exact_restore_exact_gradients():
    torch.manual_seed(0)
    plain = net()
    ref = fwd_bwd(plain)
    ref_w = [p.grad.clone() for p in plain.parameters()]

    def grads(model):
        model.zero_grad(set_to_none=True)
        return fwd_bwd(model), [p.grad.clone() for p in model.parameters()]

    torch.manual_seed(0)
    model = net()
    h = rules.attach(model, "frsf")
    ruled, _ = grads(model)
    assert not torch.allclose(ruled, ref)
    with h.exact():
        exact, exact_w = grads(model)
    assert torch.equal(exact, ref) and all(torch.equal(a, b) for a, b in zip(exact_w, ref_w, strict=True))
    again, _ = grads(model)  # the rule applies again after the block
    assert torch.equal(again, ruled)
    h.detach()
    detached, detached_w = grads(model)
    assert torch.equal(detached, ref) and all(torch.equal(a, b) for a, b in zip(detached_w, ref_w, strict=True))
    assert not hasattr(model, "_sigsym_rule_handle")


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "frsf", "brsf"])
def test_one_adam_step_changes_every_layer(rule):
    model = net()
    rules.attach(model, rule)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    x = torch.rand(4, 3, 8, 8)  # an image batch: no gradient needed for the input itself
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    for n, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[n]), f"{rule}: {n} did not change"


def test_diagnostics_are_computed_from_the_b_in_use():
    model = net()
    h = rules.attach(model, "bp")
    for row in h.diagnostics():
        assert row["angle_deg"] == pytest.approx(0.0, abs=1e-4) and row["norm_ratio"] == pytest.approx(1.0)
    h.detach()
    h = rules.attach(model, "frsf", seed=0)
    rows = {r["layer"]: r for r in h.diagnostics()}
    for name in h.layers:
        w, b = h.layers[name].weight.detach().flatten(), h.feedback(name).flatten()
        cos = F.cosine_similarity(w.double(), b.double(), dim=0).clamp(-1, 1)
        assert rows[name]["angle_deg"] == pytest.approx(torch.rad2deg(torch.arccos(cos)).item(), abs=1e-3)
        assert 0 < rows[name]["angle_deg"] < 80  # sign-concordant: well below FA's ~90
        assert rows[name]["norm_ratio"] == pytest.approx((b.norm() / w.norm()).item(), rel=1e-5)


def test_evaluation_under_no_grad_builds_no_rule_graph():
    model = net().eval()
    rules.attach(model, "brsf")
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        out = model(x)
    assert out.grad_fn is None
    out = model(x)  # and with gradients again, the rule's graph is back
    out.sum().backward()
    assert out.grad_fn is not None and x.grad is not None and x.grad.abs().sum() > 0


def test_forward_error_restores_grad_mode():
    model = net()
    rules.attach(model, "usf")
    bad = torch.rand(2, 5, 8, 8, requires_grad=True)  # wrong channel count
    with pytest.raises(RuntimeError):
        model(bad)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("n", [1, 3, 4, 5, 1000, 300_001])
def test_brsf_stream_is_identical_across_backends_and_threads(n):
    sign = torch.randn(n)
    sign[::7] = 0.0
    sign[1::11] = -0.0
    sign[2::13] = float("nan")
    outs = {}
    for backend in ("native", "numpy", "torch"):
        if backend == "native":
            from rules.kernels import native_fill

            if native_fill() is None:
                continue
        s = UniformStream(5)
        s.fill_signed_(torch.empty(10), torch.ones(10), backend=backend)  # advance the counter first
        outs[backend] = s.fill_signed_(torch.empty(n), sign, backend=backend).clone()
        scaled = s.fill_signed_(torch.empty(n), sign, scale=0.0123, backend=backend).clone()
        outs[backend + " scaled"] = scaled
        if backend == "native":  # the same draws from sign codes instead of the weights
            from rules.kernels import sign_codes

            s = UniformStream(5)
            s.fill_signed_(torch.empty(10), torch.ones(10))
            codes = sign_codes(sign)
            outs["codes"] = s.fill_signed_(torch.empty(n), torch.zeros(n), backend=backend, codes=codes).clone()
            outs["codes scaled"] = s.fill_signed_(torch.empty(n), sign, scale=0.0123, codes=codes).clone()
            with pytest.raises(ValueError, match="codes must be rules.kernels.sign_codes"):
                s.fill_signed_(torch.empty(n), sign, codes=codes.to(torch.int16))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        s = UniformStream(5)
        s.fill_signed_(torch.empty(10), torch.ones(10))
        outs["one thread"] = s.fill_signed_(torch.empty(n), sign).clone()
        outs["one thread scaled"] = s.fill_signed_(torch.empty(n), sign, scale=0.0123).clone()
    finally:
        torch.set_num_threads(threads)
    ref, ref_scaled = outs["numpy"], outs["numpy scaled"]
    for name, out in outs.items():
        assert torch.equal(out, ref_scaled if name.endswith("scaled") else ref), name
    nonzero = torch.sign(sign) != 0
    k = ref[nonzero].abs()
    assert (k >= 1).all() and (k <= 65535).all() and (k % 2 == 1).all() and (ref[~nonzero] == 0).all()
    assert torch.equal(torch.sign(ref), torch.sign(sign).nan_to_num(0.0))



@pytest.mark.parametrize("rule", ["usf", "frsf"])
def test_sign_flip_updates_equal_a_full_rebuild(rule):
    """B is patched in place where signs flip after a step; it must equal B rebuilt from scratch."""
    model = net()
    h = rules.attach(model, rule, seed=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # big steps: many signs flip
    for step in range(3):
        fwd_bwd(model, seed=step)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            model[3].weight[0, 0] = 0.0  # a weight that becomes exactly zero sends nothing back
        fwd_bwd(model, seed=10 + step)  # uses (and updates) the cached B
        for name, layer in h.layers.items():
            patched = h.feedback(name)
            layer.clear_derived()
            assert torch.equal(patched, h.feedback(name)), f"{rule} {name} step {step}"


def kernel_builds(function: str, tmp_path) -> dict:
    """`function` from the machine's own build of rules/feedback_kernels.c and from builds made here without the
    faster loops (AVX2 only; portable C), each with and without OpenMP."""
    import ctypes
    import shutil
    import subprocess

    from rules import kernels

    if kernels._library() is None:
        from conftest import require

        require("the native feedback kernels", f"{kernels.status()}")
    fns = {"default": getattr(kernels._library(), function)}
    cc = shutil.which("cc") or shutil.which("gcc")
    for name, flags in ([("portable", ["-DSIGSYM_NO_CLONES"]), ("avx2", ["-DSIGSYM_NO_AVX512"]),
                         ("avx2 openmp", ["-DSIGSYM_NO_AVX512", "-fopenmp"])] if cc else []):
        so = tmp_path / f"{name.replace(' ', '-')}.so"
        subprocess.run([cc, "-O3", "-fPIC", "-shared", *flags, "-o", str(so), str(kernels._SOURCE)],
                       check=True, capture_output=True)
        fn = getattr(ctypes.CDLL(str(so)), function)
        fn.argtypes, fn.restype = kernels._SIGNATURES[function], None
        fns[name] = fn
    return fns


@pytest.mark.parametrize("n", [1, 31, 32, 33, 1001, 70_001])
def test_brsf_draw_from_sign_codes_equals_numpy_in_every_build(n, tmp_path):
    """The codes draw (vector loops, their tail in the portable loop) gives numpy's numbers in every build, including
    the odd last element, and writes nothing outside the output, aligned or not."""
    from rules.kernels import sign_codes

    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g)
    w[::7] = 0.0
    codes = sign_codes(w)
    want = torch.empty(n)
    UniformStream._fill_numpy(want, w, 123, 456, 0.0123)
    for name, fn in kernel_builds("sigsym_brsf_fill_codes", tmp_path).items():
        for offset in (0, 1):
            buf = torch.full((n + 16,), float("nan"))
            out = buf[offset:offset + n]
            fn(out.data_ptr(), codes.data_ptr(), 0, n, 123, 456, 0.0123)
            assert torch.equal(out, want), (name, offset)
            assert buf[:offset].isnan().all() and buf[offset + n:].isnan().all(), (name, offset)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 70_001])
def test_sign_record_update_equals_torch_and_the_portable_build(n, tmp_path):
    """B = mag * sign(W) kept up to date through the sign record equals torch's formula after any sign changes, with
    the machine's own path and with the AVX2 and portable loops (built here without the faster ones), for sizes that
    are not whole blocks."""
    from rules import kernels

    libs = kernel_builds("sigsym_resign", tmp_path)
    g = torch.Generator().manual_seed(n)
    w0 = torch.randn(n, generator=g)
    w0[::7] = 0.0
    w1 = w0.clone()
    w1[::3] *= -1
    w1[1::5] = 0.0
    w1[2::11] = -0.0
    w1[4::13] = 0.5
    mag = torch.rand(n, generator=g)
    for name, fn in libs.items():
        for m, scale in [(mag, 1.0), (None, 0.37)]:
            b, record = torch.empty(n), kernels.new_sign_record(n)
            blocks = record.numel() // 2
            mptr = m.data_ptr() if m is not None else None
            for w in (w0, w1, w1):
                fn(b.data_ptr(), record.data_ptr(), w.data_ptr(), mptr, scale, n, 0, blocks)
                want = torch.sign(w) * (m if m is not None else torch.tensor(scale))
                assert torch.equal(b, want), (name, m is None)


@pytest.mark.parametrize(("rule", "key"), [("fa", "m"), ("frsf", "abs_m")])
def test_fixed_random_feedback_is_xavier_uniform_and_kept_in_float32(rule, key):
    """fa draws M ~ U(-a, a), frsf |M| with M ~ U(-a, a) (Xavier-uniform), always float32 in the checkpoint, even
    where the user made float64 the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = nn.Sequential(nn.Linear(400, 200))
        h = rules.attach(model, rule, seed=3)
    finally:
        torch.set_default_dtype(previous)
    m = h.state_dict()["layers"]["0"][key]
    a = xavier_bound(model[0].weight)
    assert m.dtype == torch.float32 and m.shape == (200, 400)
    low = 0.0 if rule == "frsf" else -a
    assert low <= float(m.min()) < low + 0.01 * a and a - 0.01 * a < float(m.max()) <= a
    assert float(m.mean()) == pytest.approx((low + a) / 2, abs=0.01 * a)
    assert float(m.std()) == pytest.approx((a - low) / 12**0.5, rel=0.02)  # uniform's spread, not a constant


def test_registering_a_rule_twice_under_one_name_is_refused():
    from rules.base import Rule
    from rules.registry import _RULES, get_rule, register_rule

    class Twin(Rule):
        name = "test-twin"

    class Other(Rule):
        name = "test-twin"

    try:
        assert register_rule(Twin) is Twin and get_rule("test-twin") is Twin
        assert register_rule(Twin) is Twin  # the same class again (a module re-imported) is fine
        assert rules.ordered_rules()[-1] == "test-twin"
        with pytest.raises(ValueError, match=r"^learning rule 'test-twin' is registered twice "
                           r"\(test_rules_api, test_rules_api\)$"):
            register_rule(Other)
        assert get_rule("test-twin") is Twin
    finally:
        _RULES.pop("test-twin", None)
    assert "test-twin" not in rules.available_rules()


def test_brsf_feedback_needs_the_handles_stream():
    model = net()
    h = rules.attach(model, "brsf")
    with pytest.raises(TypeError, match=r"^brsf draws its feedback magnitudes from the handle's UniformStream$"):
        h.rule.feedback(h.layers["3"])


def test_layer_state_follows_the_weights_device_and_dtype_once():
    from rules.base import Layer

    layer = Layer("fc", nn.Linear(3, 2))
    layer.state["m"] = torch.ones(2, 3)
    for like in (torch.empty(2, 3, dtype=torch.float64), torch.empty(2, 3, dtype=torch.float64, device="meta"),
                 torch.empty(2, 3, device="meta"), torch.empty(2, 3, dtype=torch.bfloat16, device="meta")):
        t = layer.state_on("m", like)
        assert (t.device, t.dtype) == (like.device, like.dtype)
        assert layer.state["m"] is t and layer.state_on("m", like) is t  # moved once, then kept


def test_layer_scratch_is_one_buffer_per_key_renewed_when_the_layout_changes():
    from rules.base import Layer

    layer = Layer("fc", nn.Linear(3, 2))
    w = torch.zeros(2, 3)
    a = layer.scratch("a", w)
    assert layer.scratch("a", w) is a and layer.scratch("other", w) is not a
    assert layer.scratch("a", torch.zeros(2, 3)) is a  # same layout, another tensor: still the same buffer
    for like in (w.double(), w.t(), torch.zeros(3, 2)):
        renewed = layer.scratch("a", like)
        assert renewed is not a and (renewed.dtype, renewed.shape, renewed.stride()) == (
            like.dtype, like.shape, like.stride())
        a = renewed


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf"])
def test_a_model_moved_to_float64_after_attach_sends_its_error_with_a_float64_b(rule):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    h = rules.attach(conv, rule, seed=2)
    conv(torch.rand(2, 3, 6, 6, requires_grad=True)).sum().backward()  # B built once in float32
    conv.double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    y.backward(g)
    b = h.feedback("")
    assert b.dtype == torch.float64
    xr = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(conv._conv_forward(xr, b, None), xr, g)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_brsf_after_loading_a_checkpoint_reads_a_fresh_side_sample_not_a_stale_b():
    model = net()
    h = rules.attach(model, "brsf", seed=4)
    before_any = h.feedback("3")
    fwd_bwd(model)
    assert not torch.equal(h.feedback("3"), before_any)  # the B of that backward
    h.load_state_dict(h.state_dict())
    assert torch.equal(h.feedback("3"), before_any)  # no backward since loading: the side stream's sample again


def test_handle_errors_name_what_is_wrong_and_how_to_fix_it():
    model = net()
    h = rules.attach(model, "usf", seed=7)
    with pytest.raises(KeyError, match=r"no layer 'nope' under rule 'usf'; layers: 0, 3, 6"):
        h.feedback("nope")
    with pytest.raises(TypeError, match=r"^cannot deepcopy a model while rule 'usf' is attached: copy it before "
                       r"attach\(\), or detach\(\), copy, and re-attach both with attach\(model, name, "
                       r"state=handle.state_dict\(\)\)$"):
        copy.deepcopy(model)
    other = rules.attach(net(), "frsf", seed=1)
    with pytest.raises(ValueError, match=r"^rule state is for 'frsf', but this handle runs 'usf'$"):
        h.load_state_dict(other.state_dict())
    fewer = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 5), nn.Linear(5, 5))
    state = rules.attach(fewer, "frsf").state_dict()
    with pytest.raises(ValueError, match=r"^rule state does not match the model's layers \(missing \['6'\], "
                       r"unexpected \['2'\]\)$"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing \['0', '3', '6'\], unexpected \[\]"):
        other.load_state_dict({"rule": "frsf"})
    wrong = other.state_dict()
    wrong["layers"]["3"]["abs_m"] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"^rule state 3.abs_m has shape \(2, 2\), the model needs \(8, 8, 3, 3\)$"):
        other.load_state_dict(wrong)


def test_rule_state_carries_its_seed():
    model = net()
    h = rules.attach(model, "brsf", seed=7)
    state = h.state_dict()
    assert state["rule"] == "brsf" and state["seed"] == 7
    h2 = rules.attach(net(), "brsf", seed=1, state=state)
    assert h2.seed == 7
    del state["seed"]
    h3 = rules.attach(net(), "brsf", seed=2, state=state)
    assert h3.seed == 2  # a state without one keeps the handle's


def test_detach_restores_plain_autograd_and_forgets_the_handle():
    model = net()
    h = rules.attach(model, "frsf")
    assert rules.handle_of(model) is h and h.attached
    h.detach()
    assert rules.handle_of(model) is None and h.attached is False
    h.detach()  # twice is harmless
    plain = copy.deepcopy(model)  # allowed again
    torch.testing.assert_close(fwd_bwd(model), fwd_bwd(plain), rtol=0, atol=0)


def test_diagnostics_of_zero_and_small_weights():
    model = net()
    with torch.no_grad():
        model[3].weight.zero_()
        model[6].weight.zero_()
        model[6].weight[0, 0], model[6].weight[1, 1] = 1e-4, -2e-4  # |W| and |B| far below 1, angle by hand
    h = rules.attach(model, "usf")
    rows = {r["layer"]: r for r in h.diagnostics()}
    assert math.isnan(rows["3"]["angle_deg"]) and math.isnan(rows["3"]["norm_ratio"])
    assert rows["6"]["angle_deg"] == pytest.approx(math.degrees(math.acos(3 / (5**0.5 * 2**0.5))), abs=1e-6)
    std = xavier_std(model[6].weight)
    assert rows["6"]["norm_ratio"] == pytest.approx(std * 2**0.5 / (5**0.5 * 1e-4), rel=1e-5)
    h.detach()
    fa = rules.attach(model, "fa")
    row = {r["layer"]: r for r in fa.diagnostics()}["3"]  # W = 0, B not: no angle, no ratio
    assert math.isnan(row["angle_deg"]) and math.isnan(row["norm_ratio"])


def test_brsf_feedback_before_any_backward_is_a_side_stream_sample():
    """Reading brsf's B before training never moves the training stream: it is a sample of the side stream
    seeded seed + 1,000,003, the same every time."""
    model = net()
    h = rules.attach(model, "brsf", seed=5)
    training = h.stream.state_dict()
    first = h.feedback("3")
    assert torch.equal(first, h.feedback("3")) and h.stream.state_dict() == training
    side = h.rule.feedback(h.layers["3"], UniformStream(5 + 1_000_003))
    assert torch.equal(first, side)
    assert torch.equal(torch.sign(first), torch.sign(model[3].weight.detach()))


def test_brsf_draws_nothing_for_a_layer_whose_input_needs_no_gradient():
    """The first layer of a training step sends no error down (the images need none): drawing its B anyway would
    move the stream, and a resumed run would no longer match an uninterrupted one."""
    for forward in (contextlib.nullcontext, torch.autograd.graph.save_on_cpu):  # native and explicit paths
        conv = nn.Conv2d(3, 4, 3)
        h = rules.attach(conv, "brsf", seed=3)
        before = h.stream.state_dict()
        with forward():
            out = conv(torch.rand(2, 3, 6, 6))
        out.sum().backward()
        assert conv.weight.grad is not None and h.stream.state_dict() == before, forward


@pytest.mark.parametrize("rule", ["usf", "frsf"])
def test_sign_feedback_is_cached_until_w_changes_then_updated_in_place(rule, monkeypatch):
    """B costs nothing while W stays (an attack's many steps), and after an optimizer step only the flipped signs
    are rewritten, in the same buffer, through the sign record: counted by wrapping the update kernel."""
    from rules import base, kernels

    if kernels._library() is None:
        pytest.skip("no native feedback kernels here (no C compiler, or SIGSYM_NO_NATIVE): B is rebuilt with torch")
    calls = []
    monkeypatch.setattr(base, "resign_", lambda *a, **k: calls.append(1) or kernels.resign_(*a, **k))
    model = net()
    h = rules.attach(model, rule, seed=1)
    layer = h.layers["3"]
    b = h.rule.feedback(layer)
    record = layer.derived["sign"][2]
    assert calls == [1] and record is not None  # built once, through the record
    assert h.rule.feedback(layer) is b and calls == [1]  # W unchanged: the same B, no work
    w = model[3].weight
    with torch.no_grad():
        w[:2].neg_()  # an in-place change, as an optimizer step makes: its version moves
    assert h.rule.feedback(layer) is b and calls == [1, 1] and layer.derived["sign"][2] is record
    expected = torch.sign(w.detach()) * (layer.state["abs_m"] if rule == "frsf" else layer.state["scale"])
    assert torch.equal(b, expected)


def test_sign_feedback_defaults_to_the_bare_signs():
    from rules.base import Layer

    conv = nn.Conv2d(2, 3, 3)
    assert torch.equal(Layer("c", conv).sign_feedback(), torch.sign(conv.weight.detach()))


def test_a_weight_changed_in_place_before_backward_is_a_clear_error():
    model = net()
    rules.attach(model, "usf")
    out = model(torch.rand(2, 3, 8, 8, requires_grad=True))
    with torch.no_grad():
        model[3].weight.add_(1.0)  # an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match=r"^the weight of layer '3' was modified in place after the forward pass "
                       r"that the backward pass runs through \(rule 'usf'\); step the optimizer after backward\(\)$"):
        out.sum().backward()


def test_brsf_draws_no_b_on_the_explicit_path_when_only_the_weight_gradient_is_asked_for():
    conv = nn.Conv2d(3, 4, 3)
    h = rules.attach(conv, "brsf", seed=3)
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    before = h.stream.state_dict()
    with torch.autograd.graph.save_on_cpu():
        out = conv(x)
    (gw,) = torch.autograd.grad(out.sum(), [conv.weight])
    assert h.stream.state_dict() == before and gw.shape == conv.weight.shape


@pytest.mark.parametrize("forward", [contextlib.nullcontext, torch.autograd.graph.save_on_cpu])
def test_linear_without_bias_gets_its_weight_gradient(forward):
    lin = nn.Linear(5, 3, bias=False)
    h = rules.attach(lin, "usf")
    x = torch.randn(4, 5, requires_grad=True)
    with forward():
        y = lin(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(lin.weight.grad, g.t() @ x.detach())
    torch.testing.assert_close(x.grad, g @ h.feedback(""))


def test_attach_defaults_to_seed_0_and_skips_layers_without_a_weight():
    model = net()
    spare = nn.Linear(3, 3)
    del spare.weight  # e.g. a weight moved into a parametrization
    model.add_module("spare", spare)
    h = rules.attach(model, "frsf")
    assert h.seed == 0 and list(h.layers) == ["0", "3", "6"]
    twin = rules.attach(net(), "frsf", seed=0)
    assert all(torch.equal(h.layers[n].state["abs_m"], twin.layers[n].state["abs_m"]) for n in h.layers)


def test_brsf_draws_once_per_layer_and_backward_pass():
    """One B per layer that sends an error down, per backward pass, and none in the forward: the stream's position
    is what makes a resumed run equal an uninterrupted one."""
    model = net()
    h = rules.attach(model, "brsf", seed=2)
    model(torch.rand(4, 3, 8, 8, requires_grad=True))  # a forward alone draws nothing
    assert h.stream.state_dict()["draws"] == 0
    fwd_bwd(model)  # the input requires a gradient here: all three layers send an error down
    assert h.stream.state_dict()["draws"] == 3
    F.cross_entropy(model(torch.rand(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert h.stream.state_dict()["draws"] == 5  # the images need no gradient: the first conv draws nothing
