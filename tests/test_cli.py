"""The command line: help, exit codes, and clear one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import write_fmnist
from torch import nn

import rules
from harness.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_exit_codes():
    from workloads.errors import EXIT_CODES

    out = run_cli("--help")
    assert out.returncode == 0 and "data" in out.stdout and "bench" in out.stdout and "schema" in out.stdout
    assert "exit codes:" in out.stdout
    for code, meaning in EXIT_CODES:
        assert f"{code:>3}  {meaning}" in out.stdout


def test_flags_come_from_the_settings_models_and_keep_their_spellings():
    from harness.cli import build_parser
    from harness.commands.flags import from_flags
    from harness.search import SearchSettings
    from workloads.attacks import AttackConfig

    argv = ["stage", "attack", "ft.pt", "--attack", "pgd", "--source", "exact", "--images", "6", "--only-images", "3,7",
            "--eps", "0,0.1"]
    args = build_parser(argv).parse_args(argv)
    cfg = from_flags(args, AttackConfig, "harness stage attack")
    default = AttackConfig.model_fields["batch_size"].default
    assert (cfg.n, cfg.images, cfg.eps, cfg.batch_size) == (6, [3, 7], [0.0, 0.1], default)
    argv = ["search", "dags/smoke.yaml", "--rules", "bp,frsf", "--samples", "3"]
    settings = from_flags(build_parser(argv).parse_args(argv), SearchSettings, "harness search")
    assert settings == SearchSettings(rules=["bp", "frsf"], samples=3)  # every flag not given: the model's default


def test_every_user_error_kind_has_its_documented_exit_code():
    from workloads import errors

    codes = dict(errors.EXIT_CODES)
    kinds = [errors.ConfigError, errors.DataError, errors.CheckpointError, errors.DivergenceError,
             errors.ServiceError, errors.StorageError, errors.TrialError]
    assert all(issubclass(k, errors.HarnessError) and k.exit_code in codes for k in kinds)
    assert {k.exit_code for k in kinds} == {1, 2, 3, 4, 5}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"| {code} |" in readme for code in codes), "the README's exit-code table is incomplete"


def test_an_unexpected_exception_inside_a_stage_is_a_bug_not_bad_input(monkeypatch, capsys):
    """A ValueError deep inside a stage (torch, polars, our own code) used to print one line and exit 2, as if the
    user's input were wrong: it is a bug, and keeps its traceback."""
    import workloads.evaluate

    def broken(*args, **kwargs):
        raise ValueError("some library's internal complaint")

    monkeypatch.setattr(workloads.evaluate, "evaluate_checkpoint", broken)
    assert main(["stage", "evaluate", "ckpt.pt"]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err and "internal error" in err


def test_debug_shows_the_traceback_of_bad_input_too(tmp_path, capsys):
    args = ["plan", str(tmp_path / "none.yaml")]
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("does not exist")


def test_the_schema_command_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "schema.json"
    assert main(["schema", "--out", str(out), "--check"]) == 2
    assert "is not current" in capsys.readouterr().err
    assert main(["schema", "--out", str(out)]) == 0 and main(["schema", "--out", str(out), "--check"]) == 0


def test_unknown_rule_is_a_one_line_error(capsys):
    assert main(["bench", "rules", "--rules", "bp,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown learning rule 'nope'; known rules: bp, brsf, fa, frsf, usf" in err and "Traceback" not in err


def test_data_prepare_missing_source_exit_code(tmp_path, capsys):
    args = ["data", "prepare", "fashion-mnist", "--src", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_data_locate_prints_the_source_folder_or_how_to_get_it(tmp_path, capsys):
    write_fmnist(tmp_path / "src", n_train=20, n_test=10)
    assert main(["data", "locate", "fashion-mnist", "--src", str(tmp_path / "src")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "src")
    assert main(["data", "locate", "fashion-mnist", "--src", str(tmp_path / "none")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_data_prepare_info_and_bench_data(tmp_path, capsys):
    write_fmnist(tmp_path / "src", n_train=300, n_test=50)
    out = str(tmp_path / "fm")
    assert main(["data", "prepare", "fashion-mnist", "--src", str(tmp_path / "src"), "--out", out]) == 0
    assert "train: 300 samples" in capsys.readouterr().out
    assert main(["data", "prepare", "fashion-mnist", "--src", str(tmp_path / "src"), "--out", out]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["data", "info", out, "--deep"]) == 0
    assert main(["bench", "data", out, "--epochs", "1", "--standard-jpg", "--out", str(tmp_path / "d.json")]) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["samples_per_epoch"] == 300 and result["reader_streamed_img_s"] > 0
    assert result["standard_jpg_vs_harness"] == pytest.approx(
        result["standard_jpg_streamed_img_s"] / result["reader_streamed_img_s"])
    assert "standard jpg shards, streamed" in capsys.readouterr().out


def test_standard_jpg_copy_holds_the_same_labels_and_no_image_in_the_prepared_folder(tmp_path):
    from harness.bench.data import standard_jpg_copy
    from workloads.datasets import ShardReader

    write_fmnist(tmp_path / "src", n_train=30, n_test=5)
    out = tmp_path / "fm"
    assert main(["data", "prepare", "fashion-mnist", "--src", str(tmp_path / "src"), "--out", str(out)]) == 0
    prepared = standard_jpg_copy(out, "train", tmp_path / "jpg", per_shard=8)
    assert sorted(p.name for p in (tmp_path / "jpg").glob("*.tar")) == [f"train-{i:06d}.tar" for i in range(4)]
    assert [p.name for p in prepared.iterdir() if p.suffix == ".tar"] == []  # indexed in place, nothing copied
    ours = ShardReader(out, "train", batch_size=64, cache=True)._load_all()
    theirs = ShardReader(prepared, "train", batch_size=64, cache=True)._load_all()
    assert list(theirs.labels) == list(ours.labels)
    # jpg is lossy: close to the png originals, not equal
    assert 0 < np.abs(theirs.images.astype(int) - ours.images.astype(int)).mean() < 8


@pytest.mark.slow
def test_bench_rules_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["bench", "rules", "--rules", "bp,brsf", "--rounds", "2", "--batch-size", "4", "--control",
                 "--out", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["rule"] for r in rows] == ["bp", "brsf", "fresh-B control"] and all(r["train_ratio"] > 0 for r in rows)
    assert "train x BP" in capsys.readouterr().out


def test_the_benchmark_control_writes_a_fresh_b_at_every_pass_and_is_no_registered_rule():
    from harness.bench.rules import FreshBufferControl

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    handle = rules.attach(model, FreshBufferControl, seed=0)
    assert handle.name == "fresh-B control" and handle.name not in rules.available_rules()
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    model(x).sum().backward()
    b = handle.layers["0"].last_b
    assert b is not None and b.shape == model[0].weight.shape and bool((b == 1e-3).all())
    b.fill_(7.0)  # whatever a pass left in the buffer, the next pass writes it again
    model(x).sum().backward()
    assert bool((handle.layers["0"].last_b == 1e-3).all())


def test_bench_train_runs_inside_the_real_loop(tmp_path, capsys):
    write_fmnist(tmp_path / "src", n_train=64, n_test=8)
    out = str(tmp_path / "fm")
    assert main(["data", "prepare", "fashion-mnist", "--src", str(tmp_path / "src"), "--out", out]) == 0
    path = tmp_path / "t.json"
    assert main(["bench", "train", out, "--rules", "usf", "--rounds", "2", "--batch-size", "8",
                 "--out", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["rows"][0]["rule"] == "usf" and result["rows"][0]["images_per_s"] > 0


def test_stage_commands_with_overrides(tmp_path, capsys):
    write_fmnist(tmp_path / "src", n_train=40, n_test=20)
    shards = str(tmp_path / "fm")
    assert main(["data", "prepare", "fashion-mnist", "--src", str(tmp_path / "src"), "--out", shards]) == 0
    common = ["--set", f"data.root={shards}", "--set", "device=cpu", "--set", "data.train_limit=16",
              "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1", "--quiet"]
    assert main(["stage", "pretrain", *common, "--out", str(tmp_path / "pre.pt")]) == 0
    capsys.readouterr()
    assert main(["stage", "finetune", str(tmp_path / "pre.pt"), "--rule", "frsf", *common,
                 "--set", "task.name=hashing", "--set", "task.bits=16", "--out", str(tmp_path / "ft.pt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["metrics"]["map"] <= 1 and out["metrics"]["bits"] == 16
    assert main(["stage", "evaluate", str(tmp_path / "ft.pt"), "--device", "cpu", "--diagnostic-images", "4"]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # the evaluate stage's result, as a DAG node stores it
    assert evaluated["metrics"]["map"] == pytest.approx(out["metrics"]["map"])
    assert evaluated["diagnostics"]["n"] == 4 and len(evaluated["diagnostics"]["layers"]) > 10
    assert main(["stage", "pretrain", "--set", "novalue", "--out", str(tmp_path / "x.pt")]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    # the attack stage on the hashing checkpoint: HAG fits, PGD is refused before any compute
    assert main(["stage", "attack", str(tmp_path / "ft.pt"), "--attack", "hag", "--source", "exact", "--eps", "0,0.1",
                 "-n", "6", "--param", "steps=3", "--out", str(tmp_path / "atk.json")]) == 0
    rows = json.loads((tmp_path / "atk.json").read_text())["rows"]
    assert rows[0]["map"] == rows[0]["clean_map"] and rows[1]["linf"] <= 0.1 + 1e-6
    capsys.readouterr()
    assert main(["stage", "attack", str(tmp_path / "ft.pt"), "--attack", "pgd", "--source", "rule"]) == 2
    assert "attack 'pgd' does not apply to a hashing model" in capsys.readouterr().err


def test_bench_attacks_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "a.json"
    assert main(["bench", "attacks", "--rules", "frsf", "--rounds", "2", "--batch-size", "4", "--batches", "1",
                 "--steps", "2", "--out", str(path)]) == 0
    row = json.loads(path.read_text())["rows"][0]
    assert row["rule"] == "frsf" and row["harness_overhead"] > 0 and row["rule_vs_exact_input_grad"] > 0
    assert "harness/direct" in capsys.readouterr().out


def test_gpu_check_without_cuda_says_so_in_one_line_and_succeeds(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would measure")
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines() == [
        "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing measured, nothing written"]
    assert captured.err == "" and not out.exists()


@pytest.mark.slow
def test_gpu_check_code_runs_end_to_end_on_a_cpu(tmp_path, capsys):
    """What `make gpu-check` runs on a borrowed GPU, at toy sizes on the CPU: a failure here would otherwise
    surface only in the few minutes a GPU is lent."""
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--device", "cpu", "--rules", "bp,usf", "--image-size", "32", "--batch-size", "2",
                 "--attack-batch", "2", "--steps", "1", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert [(r["rule"], r["case"]) for r in result["rules"]] == [
        ("bp", "resnet18 32px batch 2"), ("usf", "resnet18 32px batch 2"),
        ("bp", "resnet18 32px batch 2, bfloat16 autocast, channels-last"),
        ("usf", "resnet18 32px batch 2, bfloat16 autocast, channels-last")]
    assert [(a["attack"], a["rule"]) for a in result["attacks"]] == [
        ("PGD", "bp"), ("PGD", "usf"), ("SDHA", "bp"), ("SDHA", "usf")]
    assert all(a["images_per_s"] > 0 for a in result["attacks"])
    assert "| SDHA-1 | usf |" in out.read_text()
