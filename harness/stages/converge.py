"""The convergence re-run (docs/evaluation.md, "Convergence"): after every attack on a classifier, one more
exact-gradient attack, stronger than the grid's (APGD-DLR by default), on the images every L-inf attack left
robust at the primary budget. If it breaks more than the sample can resolve, the cell's attacks had not converged.
The primary budget is the DAG's (`verdicts.primary`) or, where it names none for the task, the one the baseline's
primary node chose (harness/stages/primary.py), read when the re-run starts.

Its outcomes carry the attack's name behind `RERUN` ("re-run apgd"), so the verdicts tell them from the grid's.
"""

from __future__ import annotations

import polars as pl
from pydantic import Field

from harness.stages.attack import OUTCOMES
from harness.stages.base import MODEL, Node, NodeFiles, Plan, Progress, Stage, digest, register_stage
from harness.stages.primary import chosen_budget
from workloads.attacks import ConvergeSettings, get_attack
from workloads.attacks.outcomes import survivors
from workloads.attacks.stage import RerunConfig
from workloads.tasks import get_task

RERUN = "re-run "


@register_stage
class Converge(Stage):
    name, level = "converge", 5
    resource_group = "attack"
    artifacts = (OUTCOMES,)

    def sections(self) -> dict:
        return {"converge": (ConvergeSettings | None, Field(None, description=(
            "The convergence re-run of each classifier's survivors at the primary budget (null: none; the verdicts "
            "then cannot say \"attack not converged\" and print the check as n/a).")))}

    def nodes(self, plan: Plan) -> list[Node]:
        dag, out = plan.dag, []
        conv = dag.converge
        if conv is None:
            return out
        chosen = {tuple(n.axes[k] for k in ("dataset", "backbone", "task", "seed")): n for n in plan.of("primary")}
        for ft in plan.of("finetune"):
            a = ft.axes
            if get_task(a["task"]).kind not in get_attack(conv.attack).tasks:
                continue
            eps = dag.verdicts.for_task(dag.verdicts.primary, a["task"])
            primary = chosen.get((a["dataset"], a["backbone"], a["task"], a["seed"]))
            if eps is None and primary is None:  # the baseline was not attacked: no budget to re-run at
                continue
            evidence = [n for n in plan.of("attack") if n.inputs["model"] == ft.key
                        and get_attack(n.config.attack).norm_of(n.config.params) == "linf"]
            if not evidence:
                continue
            sample = max(e.config.n for e in evidence)
            cfg = RerunConfig.model_construct(attack=conv.attack, source="exact", eps=[] if eps is None else [eps],
                                              n=sample, batch_size=conv.batch_size, params=conv.params,
                                              device=dag.device, diagnostics=False, rounds=conv.rounds,
                                              stop_below=dag.verdicts.delta / 2 * sample)
            inputs = {"model": ft, **({} if eps is not None else {"primary": primary}),
                      **{f"evidence {i}": n for i, n in enumerate(evidence)}}
            keyed = cfg.model_dump(include={"attack", "source", "eps", "n", "batch_size", "params", "rounds",
                                            "stop_below"})
            key = digest({"stage": self.name, "config": keyed, "inputs": {r: n.key for r, n in inputs.items()}})
            out.append(Node(self.name, key, f"converge {conv.attack}/exact on {a['task']}/{a['rule']} "
                            f"{a['dataset']}/{a['backbone']}/s{a['seed']}",
                            {**a, "attack": RERUN + conv.attack, "source": "exact"}, cfg).reads(**inputs))
        return out

    def run(self, node: Node, files: NodeFiles, progress: Progress) -> dict:
        from workloads.attacks import run_config, write_outcomes

        cfg = node.config
        if "primary" in node.inputs:
            cfg = cfg.model_copy(update={"eps": [chosen_budget(files)]})
        evidence = [pl.read_parquet(files.inputs[role] / OUTCOMES) for role in node.inputs
                    if role.startswith("evidence")]
        images = survivors(evidence, cfg.eps[-1])
        broken, rounds, seconds, last = [], [], 0.0, None
        for r in range(1, cfg.rounds + 1):  # each round: fresh random starts on what the rounds before left
            if not images:
                break
            result = run_config(cfg.model_copy(update={"images": images, "seed": node.axes["seed"] + r - 1}),
                                files.inputs["model"] / MODEL)
            last, seconds = result.pop("outcomes"), seconds + result["seconds"]
            broken.append(last.filter(~pl.col("robust")).with_columns(pl.lit(r, pl.Int32).alias("round")))
            rounds.append({"round": r, "attacked": len(images), "broke": broken[-1].height})
            progress({"eps": cfg.eps[-1], "point": r, "points": cfg.rounds, "metric": "broke",
                      "broke": broken[-1].height})
            images = sorted(set(images) - set(broken[-1]["image"].to_list()))
            if broken[-1].height < cfg.stop_below:
                break
        columns = ["image", "eps", "norm", "clean", "robust", "robust_raw", "linf", "l2", "invalid"]
        kept = (last if last is not None else evidence[0].clear()).select(columns)
        kept = kept.filter(pl.col("image").is_in(images)).with_columns(pl.lit(None, pl.Int32).alias("round"))
        outcomes = (pl.concat([*(b.select(*columns, "round") for b in broken), kept]).sort("image")
                    .with_columns(pl.lit(len(rounds), pl.Int32).alias("rounds")))  # a last round may break none
        write_outcomes(outcomes, files.folder / OUTCOMES)  # before result.json: that marks it done
        return {"attack": cfg.attack, "source": "exact", "rows": [], "seconds": seconds, "rounds": rounds,
                "survivors": rounds[0]["attacked"] if rounds else 0, "broken": sum(b.height for b in broken)}

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        cfg = node.config
        return get_attack(cfg.attack).passes(cfg.params, cfg.eps or [1.0], cfg.n)  # one budget, one round

    def metrics(self, result: dict) -> dict[str, float]:
        return {"survivors": result["survivors"], "broken": result["broken"], "rounds": len(result.get("rounds", []))}
