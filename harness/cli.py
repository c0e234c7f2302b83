"""`harness`: the command line. Subcommands import their heavy dependencies lazily, so `--help` is instant.

Errors: a `workloads.errors.HarnessError` (something the user can fix) prints one line and exits with its kind's
code; anything else is a bug and keeps its traceback (exit 70). `--debug` shows the traceback for both.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from workloads.errors import EXIT_CODES, HarnessError

DEFAULT_STAGE_CONFIG = str(Path(__file__).resolve().parent.parent / "workloads" / "configs"
                           / "fashion-mnist-transfer.yaml")
SCHEMA = Path(__file__).resolve().parent.parent / "dags" / "schema.json"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sets(p: argparse.ArgumentParser, what: str, example: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help=f"override a {what} value: dotted keys, list items by index, YAML values (e.g. {example})")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure speed as ratios to a baseline run in the same process")
    which = bench.add_subparsers(dest="bench", required=True, metavar="{rules,data,train,attacks,rerun,gpu}")

    def common(p: argparse.ArgumentParser, rounds: int, rules: bool = True, device: bool = True) -> None:
        if rules:
            p.add_argument("--rules", type=_csv, default=None, dest="rule_names",
                           help="comma list (default: every registered rule)")
        p.add_argument("--rounds", type=int, default=rounds, help="interleaved timing rounds (default: %(default)s)")
        if device:
            p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
        p.add_argument("--out", default=f"results/bench/{p.prog.split()[-1]}.json",
                       help="JSON output (default: %(default)s)")

    r = which.add_parser(
        "rules", help="training-step and input-gradient cost of each learning rule vs plain PyTorch BP",
        description="Times one training step (forward, backward, Adam) and one input-gradient step (an attack's "
        "d loss/d input with parameters requiring grad) for each rule, interleaved with a plain-autograd twin of "
        "the same model, and prints the ratios of medians. Runs without Ray; works on CUDA.")
    r.add_argument("--backbones", type=_csv, default=["resnet18"], help="comma list (default: resnet18; also "
                   "alexnet, vgg16, any torchvision classification model)")
    r.add_argument("--image-size", type=int, default=None, help="override the per-backbone image size")
    r.add_argument("--batch-size", type=int, default=None, help="override the per-backbone batch size")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--control", action="store_true",
                   help="also time a control that only overwrites a weight-sized B at every pass (no random numbers, "
                   "no read of W): the least brsf, which redraws B every pass, can cost here")
    common(r, 30)
    d = which.add_parser(
        "data", help="shard reader images/s vs an in-memory tensor and vs ResNet-18 training",
        description="Reads a prepared split streamed (decoding every epoch) and cached (decoded once), times the "
        "same batches from an in-memory uint8 tensor, and measures ResNet-18 training images/s at the same size.")
    d.add_argument("folder", nargs="?", default="data/fashion-mnist", help="prepared shards (default: %(default)s)")
    d.add_argument("--split", default="train")
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--pad", type=int, default=2, help="zero padding per side (default 2: 28 -> 32)")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--standard-jpg", action="store_true",
                   help="also read the split as standard WebDataset shards (webdataset.ShardWriter, jpg + cls, "
                   "indexed in place), epoch by epoch next to the harness's own")
    d.add_argument("--out", default="results/bench/data.json", help="JSON output (default: %(default)s)")
    t = which.add_parser(
        "train", help="fine-tuning images/s per rule vs BP inside the real training loop, data loading included")
    t.add_argument("folder", nargs="?", default="data/fashion-mnist", help="prepared shards (default: %(default)s)")
    t.add_argument("--backbone", default="resnet18")
    t.add_argument("--classes", type=lambda s: [int(v) for v in _csv(s)], default=[5, 6, 7, 8, 9],
                   help="target classes (default: 5,6,7,8,9, the embedded default's fine-tuning split)")
    t.add_argument("--pad", type=int, default=2)
    t.add_argument("--batch-size", type=int, default=256,
                   help="default: %(default)s, the ResNet-18 step size `bench rules` uses on a CPU")
    common(t, 15)
    a = which.add_parser(
        "attacks", help="PGD through the harness vs torchattacks directly; a rule's input gradient vs the exact one",
        description="For each rule, on one rule-attached model: PGD over the same batches through "
        "workloads.attacks.attack and through a direct torchattacks loop (ratio = harness overhead), and the "
        "input-gradient step through the rule's backward vs handle.exact() (the cost of the 'rule' gradient "
        "source). Interleaved in one process; runs without Ray; works on CUDA.")
    a.add_argument("--backbone", default="resnet18")
    a.add_argument("--image-size", type=int, default=32)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--batches", type=int, default=2, help="batches per PGD run (default: 2)")
    a.add_argument("--steps", type=int, default=5, help="PGD steps (default: 5)")
    common(a, 10)
    rr = which.add_parser(
        "rerun", help="`harness run DAG` once, then again with nothing to do: wall times and their ratio",
        description="Runs `harness run DAG` as a user would (a new process each time), first whatever the run "
        "folder needs, then `--rounds` more times with every node in the store, and prints the ratio of the "
        "median rerun to the first run.")
    rr.add_argument("dag", help="a DAG file, e.g. dags/smoke.yaml")
    rr.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="DAG overrides, as for `harness run`")
    rr.add_argument("--run-out", default=None, help="the run folder (`harness run --out`; default: runs/EXPERIMENT)")
    rr.add_argument("--rounds", type=int, default=3, help="reruns (default: %(default)s)")
    rr.add_argument("--out", default="results/bench/rerun.json", help="JSON output (default: %(default)s)")
    g = which.add_parser(
        "gpu", help="the accelerator check (make gpu-check): rules, a 224 px fine-tuning step, PGD and SDHA vs bp",
        description="On CUDA: the rules benchmark on ResNet-18 224 px in float32 and in bf16 autocast with "
        "channels-last, and PGD and SDHA images/s through the harness per rule, each as a ratio to bp in the same "
        "process; writes a markdown table (and its JSON). Without CUDA: one line saying so, exit 0.")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--batch-size", type=int, default=128, help="training and input-gradient steps (default: "
                   "%(default)s, the paper's)")
    g.add_argument("--attack-batch", type=int, default=64, help="images per attack run (default: %(default)s)")
    g.add_argument("--steps", type=int, default=10, help="PGD and SDHA steps (default: %(default)s)")
    common(g, 10)
    g.set_defaults(device="cuda", out="results/bench/gpu.md")


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="convert datasets into WebDataset shards once; inspect them")
    which = data.add_subparsers(dest="data", required=True, metavar="{prepare,locate,info,list}")
    p = which.add_parser(
        "prepare", help="write {split}-%%06d.tar shards + manifest.json for a dataset",
        description="Reads a dataset in its original format and writes WebDataset shards plus a manifest (counts, "
        "classes, label kind, image size, checksums). Re-running on an unchanged source does nothing. Existing "
        "WebDataset shards are indexed where they are, not copied: `harness data prepare webdataset --src "
        "'train=shards/train-{000000..000099}.tar,test=https://host/test-{0000..0009}.tar' --out data/mine`.")
    p.add_argument("name", help="a dataset adapter, e.g. fashion-mnist, cifar10, imagefolder, hashlist "
                   "(`harness data list`)")
    p.add_argument("--src", default=None, help="where the source data is (default: the adapter's usual place)")
    p.add_argument("--out", default=None, help="output folder (default: data/NAME)")
    p.add_argument("--image-root", default=None, help="hashlist only: folder the list files' paths are relative to")
    p.add_argument("--image-key", default=None, help="webdataset only: the image member's extensions, ';'-separated "
                   "in order of preference (default: jpg;jpeg;png;webp)")
    p.add_argument("--label-key", default=None, help="webdataset only: the label member, cls (default), json, or "
                   "json:FIELD")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default: %(default)s)")
    p.add_argument("--download", action="store_true", help="let torchvision download the source if it is missing")
    p.add_argument("--force", action="store_true", help="rewrite the shards even if the source is unchanged")
    loc = which.add_parser("locate", help="print where a dataset adapter finds its source data, or how to get it",
                           description="Exit 0 and print the source folder the adapter would read (what `harness "
                           "data prepare NAME` would read); otherwise exit 2 with how to get the data.")
    loc.add_argument("name", help="a dataset adapter (`harness data list`)")
    loc.add_argument("--src", default=None, help="where to look (default: the adapter's usual places)")
    i = which.add_parser("info", help="print a prepared dataset's manifest summary and verify its shards")
    i.add_argument("folder")
    i.add_argument("--deep", action="store_true", help="also recompute every shard checksum")
    which.add_parser("list", help="list the dataset adapters")


def _add_stage(sub: argparse._SubParsersAction) -> None:
    stage = sub.add_parser("stage", help="run one stage (pretrain, finetune, evaluate, attack) directly, without Ray")
    which = stage.add_subparsers(dest="stage", required=True, metavar="{pretrain,finetune,evaluate,attack}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=DEFAULT_STAGE_CONFIG,
                       help="YAML stage config (default: the embedded Fashion-MNIST class-split transfer)")
        _sets(p, "config", "--set finetune.epochs=1")
        p.add_argument("--out", required=True, help="checkpoint to write")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = which.add_parser("pretrain", help="BP training on the source classes")
    common(p)
    f = which.add_parser("finetune", help="new head, every layer fine-tuned under a learning rule; evaluates")
    f.add_argument("pretrained", nargs="?", default=None, help="pretrain checkpoint (default: config's weights)")
    f.add_argument("--rule", required=True, help="a learning rule, e.g. bp, usf, frsf, brsf")
    common(f)
    e = which.add_parser("evaluate", help="clean top-1 or mAP@k of a fine-tuned checkpoint, and its diagnostics")
    e.add_argument("checkpoint")
    e.add_argument("--device", default=None, help="default: the checkpoint's own")
    e.add_argument("--diagnostic-images", type=int, default=None,
                   help="test images for the rule-vs-exact input-gradient cosine (default: the evaluate stage's)")
    a = which.add_parser("attack", help="robustness of a fine-tuned checkpoint to one attack over an eps grid",
                         description="Attacks the first N target test images at every eps of the grid and prints one "
                         "row per eps (robust accuracy or mAP, success rate, perturbation sizes, queries) plus the "
                         "cosine between the rule's and the exact input gradient.")
    a.add_argument("checkpoint")
    a.add_argument("--attack", required=True, help="an attack, e.g. fgsm, pgd, apgd, boundary, hsja, hag (an unknown "
                   "name lists them all)")
    a.add_argument("--source", default=None,
                   help="gradient source for white-box attacks: rule (the paper's), exact, transfer")
    a.add_argument("--sibling", default=None, help="the BP-fine-tuned twin checkpoint (needed by --source transfer)")
    a.add_argument("--eps", type=lambda s: [float(v) for v in _csv(s)], default=[0.0, 0.02, 0.05, 0.1, 0.2],
                   help="comma list of L-inf budgets in [0, 1] (default: 0,0.02,0.05,0.1,0.2)")
    a.add_argument("-n", "--images", type=int, default=500, help="test images attacked (default: 500)")
    a.add_argument("--batch-size", type=int, default=250)
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an attack parameter, e.g. --param steps=50 (docs/extending.md lists each attack's)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--out", default=None, help="also write the result as JSON here")


def _add_run(sub: argparse._SubParsersAction) -> None:
    def dag_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("dag", help="DAG spec (YAML), e.g. dags/default.yaml")
        _sets(p, "DAG", "--set finetune.epochs=1 --set attacks.0.eps=[0,0.1]")
        p.add_argument("--overrides", action="append", default=[], metavar="FILE",
                       help="a YAML file of DAG values merged over the DAG, e.g. the best.yaml `harness search` "
                       "writes (repeatable; --set applies after)")
        p.add_argument("--out", default=None,
                       help="run folder: artifact store, MLflow sqlite store, Tune logs (default: runs/EXPERIMENT)")

    def services(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: sqlite:///RUN_FOLDER/mlflow.db; a server: http://HOST:5000)")
        p.add_argument("--address", default=None,
                       help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance on 127.0.0.1)")

    r = sub.add_parser("run", help="run a DAG (pretrain, finetune, evaluate, attack) on Ray Tune, logged to MLflow",
                       description="Runs every stage node of the DAG that is not already in the artifact store, one "
                       "Ray Tune run per stage level, logs one MLflow child run per node under one parent run, "
                       "then writes the report. Run it again after an interruption: finished nodes are skipped. "
                       "Bad input (the DAG, missing data, an unreachable Ray cluster or MLflow server) is reported "
                       "before any compute; exit codes in `harness --help`.")
    dag_args(r)
    services(r)
    r.add_argument("--results", default=None, help="report folder (default: results/EXPERIMENT)")
    r.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p = sub.add_parser("plan", help="what a DAG needs: trainings, evaluations, attacks, how many are cached, and cost",
                       description="Counts the stage nodes of a DAG (the trainings are the minimum the grid needs: "
                       "one pretraining per dataset x backbone x seed, one fine-tuning per task x rule on top), how "
                       "many are already in the artifact store, and estimates the compute: counted image passes "
                       "weighted by each backbone's FLOPs, at the rate `harness bench train` measured here or at "
                       "--tflops (see README, 'What a grid costs'). Works before the data is prepared when the DAG "
                       "gives `sizes` hints.")
    dag_args(p)
    p.add_argument("--tflops", type=float, default=None,
                   help="effective training rate in TFLOP/s to estimate hours with (e.g. measured on your GPU)")
    t = sub.add_parser("search", aliases=["tune"], help="hyper-parameter search for fine-tuning per rule (Ray Tune, "
                       "ASHA); `tune` is its old name",
                       description="Searches lr_backbone, lr_head, weight_decay and epochs for each rule on one "
                       "cell of the DAG (dataset x backbone x task; the first of each unless named), scoring "
                       "every epoch on a held-out part of the training split and stopping poor trials early with "
                       "ASHA. The DAG's own setting is scored too and kept unless a trial beats it. Writes the "
                       "winners as a DAG override file (use it with `harness run DAG --overrides FILE`), a figure "
                       "of the validation curves, and one MLflow parent run with a child per trial.")
    dag_args(t)
    services(t)
    t.add_argument("--rules", type=_csv, default=None, help="comma list (default: the DAG's rules)")
    t.add_argument("--samples", type=int, default=8, help="settings drawn per rule (default: %(default)s)")
    t.add_argument("--max-epochs", type=int, default=None,
                   help="epochs a trial may run, ASHA's max_t (default: twice the DAG's fine-tuning epochs)")
    t.add_argument("--validation", type=float, default=0.2,
                   help="fraction of the training split held out to score trials (default: %(default)s)")
    t.add_argument("--spread", type=float, default=10.0,
                   help="each value is drawn log-uniformly in [v/SPREAD, v*SPREAD] around the DAG's v "
                   "(default: %(default)s)")
    t.add_argument("--dataset", default=None, help="the DAG dataset to search on (default: the first)")
    t.add_argument("--backbone", default=None, help="the DAG backbone to search on (default: the first)")
    t.add_argument("--task", default=None, help="the DAG task to search on (default: the first)")
    t.add_argument("--write", default=None, help="override file to write (default: RUN_FOLDER/search/best.yaml)")
    rep = sub.add_parser("report", help="tables and figures of an experiment, read from MLflow",
                         description="Reads the experiment's finished runs from MLflow into polars and writes "
                         "results/EXPERIMENT/ (CSV, Markdown, PNG, README.md); prints the main tables.")
    rep.add_argument("experiment")
    rep.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: sqlite:///runs/EXPERIMENT/mlflow.db)")
    rep.add_argument("--results", default=None, help="report folder (default: results/EXPERIMENT)")
    ui = sub.add_parser("ui", help="the MLflow UI on an experiment's store (127.0.0.1), with its address",
                        description="Starts `mlflow ui` on the experiment's store (default: runs/EXPERIMENT/mlflow.db),"
                        " waits until it answers, prints the experiment's address and one comparing the fine-tuning "
                        "runs of its latest run, and serves until Ctrl-C.")
    ui.add_argument("experiment")
    ui.add_argument("--tracking-uri", default=None,
                    help="MLflow tracking URI (default: sqlite:///runs/EXPERIMENT/mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, this machine "
                    "only; 0.0.0.0 exposes the UI to the network)")
    ui.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    s = sub.add_parser("schema", help="write the JSON Schema of DAG files (editors complete and check DAGs with it)",
                       description="Writes the JSON Schema of a DAG file, generated from the settings each stage, "
                       "task, attack and registry declares. DAG files point at it with a first line "
                       "`# yaml-language-server: $schema=schema.json` (the YAML language server: VS Code, Neovim, "
                       "...).")
    s.add_argument("--out", default=str(SCHEMA), help="where to write it (default: dags/schema.json)")
    s.add_argument("--check", action="store_true", help="write nothing; exit 2 if the file is not current")


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    parser = argparse.ArgumentParser(
        prog="harness", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark harness for sign-symmetry learning rules as robust fine-tuners (arXiv 2502.05925).",
        epilog=f"exit codes:\n{codes}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of every error, also of bad input")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_data(sub)
    _add_stage(sub)
    _add_bench(sub)
    return parser


def _run_data(args: argparse.Namespace) -> int:
    from workloads import datasets
    from workloads.datasets.prepare import describe

    if args.data == "list":
        for name in datasets.available_sources():
            print(f"{name:<14} {datasets.get_source(name).description}")
        return 0
    if args.data == "locate":
        print(datasets.get_source(args.name)(src=args.src).locate())
        return 0
    if args.data == "info":
        from workloads.datasets.manifest import check_shard_files

        m = datasets.load_manifest(args.folder)
        check_shard_files(Path(args.folder), m, deep=args.deep)
        print(describe(m))
        print("shards: all present" + (", checksums match" if args.deep else " with the sizes the manifest lists"))
        return 0
    out = Path(args.out) if args.out else Path("data") / args.name
    # the adapter's own options, each a flag of the same name (--image-root for hashlist)
    options = {k: getattr(args, k) for k in datasets.get_source(args.name).Options.model_fields
               if getattr(args, k, None) is not None}

    def progress(split: str, done: int, total: int | None) -> None:
        _log(f"[prepare {args.name}] {split}: {done}/{total if total else '?'}")

    manifest, wrote = datasets.prepare(
        args.name, out, src=args.src, shard_size=args.shard_size, download=args.download, force=args.force,
        progress=progress, **options,
    )
    print(("wrote " if wrote else "up to date (source unchanged), nothing written: ") + str(out))
    print(describe(manifest))
    return 0


def _run_stage(args: argparse.Namespace) -> int:
    from harness.overrides import assign, read_mapping
    from harness.runtime import tune_allocator
    from workloads import train
    from workloads.checkpoint import load_checkpoint
    from workloads.config import stage_config

    tune_allocator()
    if args.stage == "evaluate":
        from workloads.evaluate import evaluate_checkpoint

        settings = {} if args.diagnostic_images is None else {"diagnostic_images": args.diagnostic_images}
        result = evaluate_checkpoint(args.checkpoint, settings, device=args.device)
        print(json.dumps(result, indent=1))
        return 0
    if args.stage == "attack":
        return _run_attack(args)
    cfg = stage_config(assign(read_mapping(args.config, "stage config"), args.sets, args.config), args.config)
    if args.stage == "pretrain":
        path = train.pretrain(cfg, args.out, progress=not args.quiet)
    else:
        path = train.finetune(args.pretrained, args.rule, cfg, args.out, progress=not args.quiet)
    ckpt = load_checkpoint(path)
    print(json.dumps({"checkpoint": str(path), "metrics": ckpt["metrics"], "history": ckpt["history"]}, indent=1))
    return 0


def _run_attack(args: argparse.Namespace) -> int:
    from harness.overrides import assign
    from workloads.attacks import attack_checkpoint, write_outcomes

    params = assign({}, args.param, "harness stage attack", flag="--param")
    result = attack_checkpoint(args.checkpoint, args.attack, args.source, args.eps,
                               {"n": args.images, "batch_size": args.batch_size, "params": params,
                                "device": args.device}, sibling=args.sibling)
    metric = result["metric"]
    print(f"{'eps':>6} {metric:>10} {'success':>8} {'linf':>7} {'l2':>7} {'queries':>8}")
    for r in result["rows"]:
        print(f"{r['eps']:>6.3f} {r[metric]:>10.4f} {r['success_rate']:>8.3f} {r['linf']:>7.4f} {r['l2']:>7.3f}"
              f" {r['queries']:>8.0f}")
    if result["diagnostics"]:
        print(f"rule vs exact input-gradient cosine: {result['diagnostics']['input_grad_cosine_mean']:.3f}")
    outcomes = result.pop("outcomes")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        table = write_outcomes(outcomes, Path(args.out).with_suffix(".parquet"))
        print(f"wrote {args.out} and the per-image outcomes {table}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from harness.cost import dataset_sizes, estimate, measured_rate
    from harness.dag import STAGES, load_dag
    from harness.plan import build_plan
    from harness.store import ArtifactStore

    dag = load_dag(args.dag, args.sets, args.overrides)
    nodes = build_plan(dag, require_data=False)
    store = ArtifactStore(Path(args.out or Path("runs") / dag.experiment) / "store")
    if args.tflops is not None:
        rate, source = args.tflops * 1e12, f"--tflops {args.tflops:g}"
    else:
        rate, source = measured_rate() or (None, "no measured rate (run `harness bench train`)")
    sizes, sides = dataset_sizes(dag.config, dag.path)
    cost = estimate(nodes, sizes, sides, rate)
    print(f"{dag.path}: experiment {dag.experiment!r}, store {store.root}")
    print(f"{'stage':<10} {'nodes':>7} {'cached':>7} {'to run':>7} {'PFLOP':>10} {'hours':>9}")
    total_h = 0.0
    for stage in STAGES:
        level = [n for n in nodes if n.stage == stage]
        cached = sum(store.done(stage, n.key) for n in level)
        c = cost.get(stage, {"pflop": 0.0, "hours": None})
        hours = "" if c["hours"] is None else f"{c['hours']:.2f}"
        total_h += c["hours"] or 0.0
        print(f"{stage:<10} {len(level):>7} {cached:>7} {len(level) - cached:>7} {c['pflop']:>10.3f} {hours:>9}")
    trainings = sum(n.stage in ("pretrain", "finetune") for n in nodes)
    print(f"trainings: {trainings} (the minimum for this grid); estimate at {source}"
          + (f": {total_h:.2f} hours of compute in all" if rate else ""))
    return 0


def _run_run(args: argparse.Namespace) -> int:
    import time

    from harness import rerun

    t0 = time.perf_counter()
    inputs = rerun.fingerprint(args.dag, args.sets, args.overrides, args.out, args.tracking_uri, args.results,
                               not args.no_report)
    last = rerun.unchanged(*inputs) if inputs else None
    if last is not None:  # nothing changed since the last complete run: its answer stands (harness/rerun.py)
        counts = last["nodes"]
        _log(f"harness run: {time.perf_counter() - t0:.1f} s; ran: {', '.join(f'{s} 0' for s in counts)}; cached: "
             f"{', '.join(f'{s} {n}' for s, n in counts.items())} (every node is in the store and nothing changed "
             f"since the complete run of {last['at']}: nothing logged, the report stands)")
        if last["summary"]:
            print(last["summary"])
        return 0

    from harness.dag import load_dag
    from harness.orchestrator import run_dag
    from harness.report import summary_text

    dag = load_dag(args.dag, args.sets, args.overrides)
    results = None if args.no_report else (args.results or Path("results") / dag.experiment)
    summary = run_dag(dag, out_dir=args.out, tracking_uri=args.tracking_uri, address=args.address,
                      results_dir=results)
    ran = ", ".join(f"{s} {n}" for s, n in summary.ran.items())
    cached = ", ".join(f"{s} {n}" for s, n in summary.cached.items())
    _log(f"harness run: {summary.seconds:.0f} s; ran: {ran}; cached: {cached}")
    text = summary_text(summary.report) if summary.report is not None else ""
    if text:
        print(text)
    if inputs and summary.ok and (results is None or summary.report is not None):
        rerun.record(inputs[0], inputs[1], summary.results, results,
                     {s: summary.ran[s] + summary.cached[s] for s in summary.ran}, text)
    for label, error in summary.failed.values():
        _log(f"harness run: FAILED {label}: {error.splitlines()[0]}")
    if summary.skipped:
        _log(f"harness run: {len(summary.skipped)} node(s) skipped because an input failed")
    return 0 if summary.ok else 1


def _run_search(args: argparse.Namespace) -> int:
    from harness.dag import load_dag
    from harness.search import SearchSettings, format_result, search_dag
    from workloads.settings import validate

    dag = load_dag(args.dag, args.sets, args.overrides)
    settings = validate(SearchSettings, {k: getattr(args, k) for k in SearchSettings.model_fields},
                        "harness search")
    result = search_dag(dag, settings, out_dir=args.out, tracking_uri=args.tracking_uri, address=args.address,
                        override_path=args.write, log=_log)
    print(format_result(result))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from harness.report import summary_text, write_report
    from harness.tracking import existing_store

    uri = existing_store(args.experiment, args.tracking_uri)
    print(summary_text(write_report(uri, args.experiment, args.results or Path("results") / args.experiment)))
    return 0


def _run_ui(args: argparse.Namespace) -> int:
    from harness.ui import serve

    return serve(args.experiment, args.tracking_uri, args.host, args.port, log=lambda m: print(m, flush=True))


def _run_schema(args: argparse.Namespace) -> int:
    from harness.dag import json_schema
    from workloads.errors import ConfigError

    text, out = json_schema(), Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            raise ConfigError(f"{out} is not current: run `harness schema --out {out}` and commit it")
        print(f"{out} is current")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    import importlib

    from harness.bench.rules import write_json
    from harness.runtime import tune_allocator

    tune_allocator()
    module = importlib.import_module(f"harness.bench.{args.bench}")
    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "bench", "out", "debug")}
    if "rule_names" in kwargs:
        kwargs["rule_names"] = _rule_names(kwargs["rule_names"])
    result = module.run(**kwargs, log=_log)
    print(module.format_table(result))
    if result is None:  # nothing to measure here (gpu without CUDA): said above, not an error
        return 0
    if hasattr(module, "write_markdown"):
        print(f"wrote {module.write_markdown(result, args.out)}")
        print(f"wrote {write_json(result, Path(args.out).with_suffix('.json'))}")
    else:
        print(f"wrote {write_json(result, args.out)}")
    return 0


def _rule_names(requested: list[str] | None) -> list[str]:
    """The requested rules (default: all), checked before any model is built."""
    import rules
    from workloads.errors import InputError, unknown_name

    for name in requested or []:
        if name not in rules.available_rules():
            raise InputError(f"--rules: {unknown_name('learning rule', name, rules.available_rules(), 'rules')}")
    return requested or rules.ordered_rules()


COMMANDS = {"bench": _run_bench, "data": _run_data, "stage": _run_stage, "plan": _run_plan, "run": _run_run,
            "search": _run_search, "tune": _run_search, "report": _run_report, "schema": _run_schema,
            "ui": _run_ui}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; finished nodes are kept, run the same command again to resume", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001  (a bug, not the user's input: keep everything needed to report it)
        traceback.print_exc()
        print("harness: internal error (a bug, not your input; the traceback above says where): please report it",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
