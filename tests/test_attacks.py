"""Gradient attacks with the gradient source as an axis: budgets, eps = 0, rule vs exact, config errors."""

from __future__ import annotations

import pytest
import torch
from datagen import write_fmnist

from workloads.attacks import attack, validate
from workloads.datasets import ShardReader, prepare
from workloads.train import finetune, load_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("atk")
    write_fmnist(root / "src", n_train=48, n_test=24)
    prepare("fashion-mnist", root / "fm", src=root / "src")
    cfg = {"device": "cpu", "seed": 2, "data": {"root": str(root / "fm"), "pad": 2, "train_limit": 16},
           "finetune": {"epochs": 1, "batch_size": 8}}
    paths = {r: finetune(None, r, cfg, root / f"{r}.pt", progress=False) for r in ("bp", "frsf")}
    batches = list(ShardReader(str(root / "fm"), "test", batch_size=12, limit=12, pad=2))
    return {r: load_model(p) for r, p in paths.items()}, batches


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
@pytest.mark.parametrize("source", ["rule", "exact", "transfer"])
def test_budget_and_eps_zero(models, name, source):
    loaded, batches = models
    rows = attack(loaded["frsf"], name, source, [0.0, 0.03, 0.2], batches, sibling=loaded["bp"])
    assert rows[0]["robust_acc"] == rows[0]["clean_acc"] and rows[0]["linf"] == 0
    for row in rows[1:]:
        assert row["linf"] <= row["eps"] + 1e-6 and 0 <= row["robust_acc"] <= 1


def test_adversarial_images_stay_in_the_box(models):
    loaded, batches = models
    from workloads.attacks import get_attack

    x, y = batches[0]
    craft = get_attack("pgd").build(loaded["frsf"].model, 0.3, {"steps": 3})
    x_adv = craft(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.3 + 1e-6


def test_exact_equals_rule_on_bp_and_differs_on_frsf(models):
    loaded, batches = models
    for rule, same in (("bp", True), ("frsf", False)):
        a = attack(loaded[rule], "fgsm", "rule", [0.1], batches)[0]
        b = attack(loaded[rule], "fgsm", "exact", [0.1], batches)[0]
        x, y = batches[0]
        from workloads.attacks import get_attack

        craft = get_attack("fgsm").build(loaded[rule].model, 0.1, {})
        adv_rule = craft(x, y)
        with loaded[rule].handle.exact():
            adv_exact = craft(x, y)
        assert torch.equal(adv_rule, adv_exact) is same, rule
        if same:
            assert a == {**b, "source": "rule"}


def test_config_errors_come_before_compute():
    with pytest.raises(ValueError, match="eps 1.5 is outside"):
        validate("pgd", "classification", "rule", [0.1, 1.5])
    with pytest.raises(ValueError, match="gradient source 'sideways'"):
        validate("pgd", "classification", "sideways", [0.1])
    with pytest.raises(ValueError, match="attack 'pgd' does not apply to a hashing model"):
        validate("pgd", "hashing", "rule", [0.1])
    with pytest.raises(ValueError, match="unknown attack 'cw2'; known attacks: fgsm, pgd"):
        validate("cw2", "classification", "rule", [0.1])
