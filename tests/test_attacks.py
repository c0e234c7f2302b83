"""Attacks: budgets, eps = 0, strength, gradient sources, hashing attacks, black-box without backward, config errors."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from datagen import write_fmnist
from torch import nn

import rules
from workloads.attacks import (
    ATTACKS,
    AttackContext,
    attack,
    attack_checkpoint,
    check_attack,
    get_attack,
    gradient_cosine,
)
from workloads.checkpoint import Loaded, load_model
from workloads.datasets import ShardReader, prepare
from workloads.errors import ConfigError
from workloads.tasks import get_task
from workloads.train import finetune


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Fashion-MNIST-format checkpoints (bp and frsf) from the real stage functions, on tiny synthetic data."""
    root = tmp_path_factory.mktemp("atk")
    write_fmnist(root / "src", n_train=48, n_test=24)
    prepare("fashion-mnist", root / "fm", src=root / "src")
    cfg = {"device": "cpu", "seed": 2, "data": {"root": str(root / "fm"), "pad": 2, "train_limit": 16},
           "finetune": {"epochs": 1, "batch_size": 8}}
    paths = {r: finetune(None, r, cfg, root / f"{r}.pt", progress=False) for r in ("bp", "frsf")}
    batches = list(ShardReader(str(root / "fm"), "test", batch_size=12, limit=12, pad=2))
    return {r: load_model(p) for r, p in paths.items()}, batches, paths


def _templates(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of `classes` fixed random templates plus noise: learnable in a few hundred steps, on a CPU."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, 3, 12, 12, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (0.6 * templates[y] + 0.4 * torch.rand(n, 3, 12, 12, generator=g)).clamp(0, 1)
    return x, y


def _small_net(outputs: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(128, outputs))


def _trained(task, rule: str = "bp", steps: int = 150, seed: int = 0) -> tuple[Loaded, list]:
    torch.manual_seed(seed)
    model = _small_net(task.num_outputs)
    handle = rules.attach(model, rule, seed=seed)
    x, y = _templates(512, task.num_classes, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        i = torch.arange(step * 64, step * 64 + 64) % len(x)
        opt.zero_grad()
        task.loss(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 128, 64)]
    return Loaded(model, handle, task, {}, {}), batches


@pytest.fixture(scope="module")
def classifier():
    return _trained(get_task("classification")(4))


@pytest.fixture(scope="module")
def hasher():
    loaded, _ = _trained(get_task("hashing")(4, bits=16, seed=0), steps=200)
    x, y = _templates(512, 4, 0)
    queries = [(x[:64], y[:64])]
    database = [(x[64:], y[64:])]
    return loaded, queries, database


@pytest.mark.parametrize("name", ["fgsm", "pgd", "fmn"])
@pytest.mark.parametrize("source", ["rule", "exact", "transfer"])
def test_budget_and_eps_zero(models, name, source):
    loaded, batches, _ = models
    rows = attack(loaded["frsf"], name, source, [0.0, 0.03, 0.2], batches, sibling=loaded["bp"])
    assert rows[0]["robust_acc"] == rows[0]["clean_acc"] and rows[0]["linf"] == 0
    for row in rows[1:]:
        assert row["linf"] <= row["eps"] + 1e-6 and 0 <= row["robust_acc"] <= 1


@pytest.mark.parametrize("name,params", [("pgd", {"steps": 3}), ("pgd", {"steps": 2, "restarts": 3}), ("fgsm", {}),
                                         ("apgd", {"steps": 3}), ("apgd-dlr", {"steps": 3}),
                                         ("square", {"queries": 30})])
def test_adversarial_images_stay_in_the_box(classifier, name, params):
    loaded, batches = classifier
    x, y = batches[0]
    spec = get_attack(name)
    craft = spec.build(loaded.model, 0.3, {**spec.defaults, **params}, AttackContext(loaded.task))
    x_adv = craft(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.3 + 1e-6


def test_pgd_is_at_least_as_strong_as_fgsm_and_breaks_a_bp_model(classifier):
    loaded, batches = classifier
    grid = [0.0, 0.05, 0.1, 0.3]
    fgsm = attack(loaded, "fgsm", "rule", grid, batches)
    pgd = attack(loaded, "pgd", "rule", grid, batches, params={"steps": 20})
    assert fgsm[0]["clean_acc"] >= 0.95  # the model learned the task
    for f, p in zip(fgsm, pgd, strict=True):
        assert p["robust_acc"] <= f["robust_acc"] + 1e-9, (f, p)
    assert pgd[-1]["robust_acc"] <= 0.05
    assert pgd[-1]["queries"] == 20  # one forward per gradient step, per image


def test_pgd_restarts_only_the_survivors_and_never_breaks_fewer(classifier):
    loaded, batches = classifier
    once = attack(loaded, "pgd", "exact", [0.0, 0.04], batches, params={"steps": 2})
    thrice = attack(loaded, "pgd", "exact", [0.0, 0.04], batches, params={"steps": 2, "restarts": 3})
    assert 0 < once[1]["robust_acc"] and thrice[1]["robust_acc"] <= once[1]["robust_acc"]
    # two steps and a check per restart, on the survivors only: less than three full runs
    assert once[1]["queries"] < thrice[1]["queries"] < 3 * once[1]["queries"] + 3


def test_fmn_finds_radii_as_small_as_pgd_breaks_at_and_reads_every_budget_off_one_run(classifier):
    loaded, batches = classifier
    grid = [0.0, 0.02, 0.05, 0.1, 0.3]
    fmn = attack(loaded, "fmn", "exact", grid, batches, params={"steps": 50})
    pgd = attack(loaded, "pgd", "exact", grid, batches, params={"steps": 20})
    assert fmn[0]["found"] == 1.0 and 0 < fmn[0]["median_linf"] < 0.3
    assert fmn[0]["queries"] == 52  # one run: the clean check, 50 gradient steps, the final check
    for f, p in zip(fmn, pgd, strict=True):
        assert f["robust_acc"] <= p["robust_acc"] + 0.05, (f, p)
    assert [r["robust_acc"] for r in fmn] == sorted((r["robust_acc"] for r in fmn), reverse=True)


def test_exact_equals_rule_on_bp_and_differs_on_frsf(models):
    loaded, batches, _ = models
    x, y = batches[0]
    for rule, same in (("bp", True), ("frsf", False)):
        a = attack(loaded[rule], "fgsm", "rule", [0.1], batches)[0]
        b = attack(loaded[rule], "fgsm", "exact", [0.1], batches)[0]
        craft = get_attack("fgsm").build(loaded[rule].model, 0.1, {}, AttackContext(loaded[rule].task))
        adv_rule = craft(x, y)
        with loaded[rule].handle.exact():
            adv_exact = craft(x, y)
        assert torch.equal(adv_rule, adv_exact) is same, rule
        if same:
            assert a == {**b, "source": "rule"}


def test_gradient_cosine_is_one_for_bp_and_not_for_frsf(models):
    loaded, batches, _ = models
    assert gradient_cosine(loaded["bp"], batches)["input_grad_cosine_min"] > 1 - 1e-5
    assert gradient_cosine(loaded["frsf"], batches)["input_grad_cosine_mean"] < 0.99


def test_a_vanishing_gradient_is_counted_not_scored_zero():
    """A confidently classified image's float32 cross-entropy gradient underflows to exactly 0: it has no direction.
    torch's cosine_similarity scores such an image 0 (it clamps the norms), which pulled bp's cosine below 1."""
    import rules
    from workloads.checkpoint import Loaded
    from workloads.tasks import get_task

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    y = torch.arange(8) % 3
    x = torch.nn.functional.one_hot(y, 12).float().view(8, 3, 2, 2)  # image c lights feature c
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[[0, 1, 2], [0, 1, 2]] = 1e4  # a margin of 1e4: softmax is exactly one-hot in float32
    x = torch.cat([x, x * 1e-3])  # the same images, dimmed: a margin of 10, a small but finite gradient
    y = torch.cat([y, y])
    loaded = Loaded(model, rules.attach(model, "bp"), get_task("classification")(3), {}, {})
    out = gradient_cosine(loaded, [(x, y)])
    assert out["n"] == 16 and out["vanishing"] == 8
    assert out["input_grad_cosine_min"] == pytest.approx(1.0, abs=1e-12)  # bp: one gradient, computed twice


@pytest.mark.parametrize("name", [n for n in ATTACKS.in_order() if get_attack(n).needs_gradient_source])
def test_every_tensor_an_attack_uses_lives_on_the_models_device(name):
    """On a CPU-only machine, the meta device stands in for a GPU: a model and images on `meta` meet any tensor the
    attack made on the CPU (a `.cpu()` or a factory without `device=`) in an op that refuses to mix devices. SDHA
    did exactly that with its reference codes. An attack that must read a value (`.item()`, HAG's early stop) stops
    there on meta, which says nothing about devices; it is checked up to that point."""
    from workloads.tasks import get_task

    torch.manual_seed(0)
    kind = get_attack(name).tasks[0]
    outputs = 8 if kind == "hashing" else 3
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, outputs)).to("meta").eval()
    task = get_task(kind)(3, bits=8) if kind == "hashing" else get_task(kind)(3)
    references = (torch.where(torch.rand(20, 8) > 0.5, 1.0, -1.0), torch.randint(0, 3, (20,)))  # host, as encode()
    ctx = AttackContext(task, references=references if kind == "hashing" else None)
    x, y = torch.rand(4, 3, 2, 2, device="meta"), torch.randint(0, 3, (4,), device="meta")
    small = {k: 2 for k in ("steps",) if k in get_attack(name).params.model_fields}
    try:
        out = get_attack(name).build(model, 0.1, small, ctx)(x, y)
    except (RuntimeError, NotImplementedError) as exc:
        assert "meta" in str(exc) and "device" not in str(exc).replace("meta tensors", ""), f"{name}: {exc}"
    else:
        out = out[0] if isinstance(out, tuple) else out  # a minimal attack: (x_adv, found)
        assert out.device.type == "meta"


@pytest.mark.parametrize("name", ["hag", "sdha"])
def test_hashing_attacks_lower_map_within_budget(hasher, name):
    loaded, queries, database = hasher
    rows = attack(loaded, name, "exact", [0.0, 0.1, 0.3], queries, database=database, params={"steps": 40})
    assert rows[0]["map"] == rows[0]["clean_map"] > 0.9 and rows[0]["hamming"] == 0
    assert rows[-1]["map"] < rows[0]["map"] - 0.3, rows
    for row in rows:
        assert row["linf"] <= row["eps"] + 1e-6
    x, y = queries[0]
    spec = get_attack(name)
    ctx = AttackContext(loaded.task, references=(torch.ones(8, 16), torch.zeros(8, dtype=torch.long)))
    x_adv = spec.build(loaded.model, 0.1, {**spec.defaults, "steps": 5}, ctx)(x, y)
    assert 0 <= x_adv.min() and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.1 + 1e-6


@pytest.fixture
def no_backward(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a black-box attack called backward")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    return calls


@pytest.mark.parametrize("name,params", [("boundary", {"steps": 30}),
                                         ("hsja", {"steps": 3, "initial_gradient_eval_steps": 10,
                                                   "max_gradient_eval_steps": 20}),
                                         ("square", {"queries": 30})])
def test_black_box_attacks_never_call_backward(classifier, no_backward, name, params):
    loaded, batches = classifier
    hooked = []
    handles = [m.register_full_backward_hook(lambda *a: hooked.append(1)) for m in loaded.model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    grid = [0.0, 1.0, 5.0] if name == "boundary" else [0.0, 0.1, 0.5]  # Boundary's budgets are L2 distances
    try:
        rows = attack(loaded, name, None, grid, batches[:1], params=params)
    finally:
        for h in handles:
            h.remove()
    assert not no_backward and not hooked
    assert rows[0]["robust_acc"] == rows[0]["clean_acc"]
    assert rows[-1]["queries"] > 0
    if name != "square":  # minimal attacks: the curve comes from one run, and it found adversarials
        assert rows[1]["norm"] == ("l2" if name == "boundary" else "linf")
        assert rows[-1]["success_rate"] > 0 and rows[-1]["robust_acc"] < rows[0]["robust_acc"]
        # the start search's queries apart from the attack's own, per image it attacked: together within the total
        n, attacked = len(batches[0][1]), rows[0]["clean_acc"] * len(batches[0][1])
        assert rows[0]["start_queries"] > 0 and rows[0]["own_queries"] > 0
        assert rows[0]["start_queries"] * n + rows[0]["own_queries"] * attacked <= rows[0]["queries"] * n + 1e-6


def test_attack_checkpoint_end_to_end(models):
    _, _, paths = models
    out = attack_checkpoint(paths["frsf"], "pgd", "transfer", [0.0, 0.1], {"n": 12, "batch_size": 6,
                                                                         "params": {"steps": 2}},
                            sibling=paths["bp"])
    assert [r["eps"] for r in out["rows"]] == [0.0, 0.1] and out["rule"] == "frsf"
    assert out["rows"][0]["n"] == 12 and "input_grad_cosine_mean" in out["diagnostics"]
    again = attack_checkpoint(paths["frsf"], "pgd", "transfer", [0.0, 0.1], {"n": 12, "batch_size": 6,
                                                                           "params": {"steps": 2},
                                                                           "diagnostics": False},
                              sibling=paths["bp"])
    assert again["rows"] == out["rows"] and again["diagnostics"] == {}  # seeded; the cosine is optional
    with pytest.raises(ValueError, match="needs the sibling fine-tuned with the baseline rule"):
        attack_checkpoint(paths["frsf"], "pgd", "transfer", [0.1], {"n": 4})
    with pytest.raises(ValueError, match="attack-stage config: imgs: unknown key; allowed: n, batch_size"):
        attack_checkpoint(paths["frsf"], "pgd", "rule", [0.1], {"imgs": 4})


def test_attacking_some_images_gives_their_outcomes_of_a_run_on_all(models):
    """The convergence re-run attacks only the survivors: their rows must be those of the same images in a full run
    (FGSM is deterministic), and keep the images' positions in the test split."""
    _, _, paths = models
    full = attack_checkpoint(paths["frsf"], "fgsm", "exact", [0.1], {"n": 12, "batch_size": 5,
                                                                    "diagnostics": False})["outcomes"]
    some = attack_checkpoint(paths["frsf"], "fgsm", "exact", [0.1], {"images": [9, 2, 4], "batch_size": 2,
                                                                    "diagnostics": False})["outcomes"]
    assert some["image"].to_list() == [2, 4, 9]
    cols = ["image", "eps", "clean", "robust", "robust_raw"]
    assert some.select(cols).equals(full.filter(pl.col("image").is_in([2, 4, 9])).select(cols))


def test_a_random_sample_is_drawn_from_the_whole_split_by_its_own_seed_the_same_for_every_model(models):
    _, _, paths = models
    config = {"n": 5, "batch_size": 4, "sample": "random", "diagnostics": False}
    full = attack_checkpoint(paths["frsf"], "fgsm", "exact", [0.1], {"n": 24, "diagnostics": False})["outcomes"]
    drawn = {rule: attack_checkpoint(paths[rule], "fgsm", "exact", [0.1], config)["outcomes"] for rule in paths}
    images = drawn["frsf"]["image"].to_list()
    assert drawn["bp"]["image"].to_list() == images and len(set(images)) == 5 and images != list(range(5))
    cols = ["image", "eps", "clean", "robust", "robust_raw"]
    assert drawn["frsf"].select(cols).equals(full.filter(pl.col("image").is_in(images)).select(cols))
    other = attack_checkpoint(paths["frsf"], "fgsm", "exact", [0.1], {**config, "sample_seed": 1})["outcomes"]
    assert other["image"].to_list() != images
    with pytest.raises(ConfigError, match="n: 99 images asked for"):
        attack_checkpoint(paths["frsf"], "fgsm", "exact", [0.1], {**config, "n": 99})


def test_config_errors_come_before_compute():
    with pytest.raises(ValueError, match="eps 1.5 is outside"):
        check_attack("pgd", "classification", "rule", [0.1, 1.5])
    with pytest.raises(ValueError, match="eps -0.1 is outside"):
        check_attack("fgsm", "classification", "rule", [-0.1])
    with pytest.raises(ValueError, match="gradient source 'sideways'"):
        check_attack("pgd", "classification", "sideways", [0.1])
    with pytest.raises(ValueError, match="attack 'pgd' does not apply to a hashing model"):
        check_attack("pgd", "hashing", "rule", [0.1])
    with pytest.raises(ValueError, match="attack 'hag' does not apply to a classification model"):
        check_attack("hag", "classification", "rule", [0.1])
    with pytest.raises(ValueError, match="'boundary' queries outputs only"):
        check_attack("boundary", "classification", "exact", [0.1])
    with pytest.raises(ValueError, match="params: stepz: unknown key; allowed: steps, restarts, alpha_factor, "
                                         r"random_start \(did you mean 'steps'\?\)"):
        check_attack("pgd", "classification", "rule", [0.1], {"stepz": 3})
    with pytest.raises(ValueError, match="unknown attack 'cw2'; known attacks: apgd, apgd-dlr, autoattack, boundary"):
        check_attack("cw2", "classification", "rule", [0.1])
