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
from workloads.attacks import AttackConfig, ConvergeSettings, get_attack
from workloads.attacks.outcomes import survivors
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
            cfg = AttackConfig.model_construct(attack=conv.attack, source="exact", eps=[] if eps is None else [eps],
                                               n=max(n.config.n for n in evidence), batch_size=conv.batch_size,
                                               params=conv.params, device=dag.device, diagnostics=False)
            inputs = {"model": ft, **({} if eps is not None else {"primary": primary}),
                      **{f"evidence {i}": n for i, n in enumerate(evidence)}}
            keyed = cfg.model_dump(include={"attack", "source", "eps", "n", "batch_size", "params"})
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
        if images:
            result = run_config(cfg.model_copy(update={"images": images}), files.inputs["model"] / MODEL)
            outcomes = result.pop("outcomes")
        else:  # every image already broken: nothing to re-run, and an empty table says so
            outcomes = evidence[0].clear().select("image", "eps", "norm", "clean", "robust", "robust_raw", "linf",
                                                  "l2", "invalid")
            result = {"attack": cfg.attack, "source": "exact", "rows": [], "seconds": 0.0}
        result.update({"survivors": len(images), "broken": int((~outcomes["robust"]).sum())})
        progress({"eps": cfg.eps[-1], "point": 1, "points": 1, "metric": "broken", "broken": result["broken"]})
        write_outcomes(outcomes, files.folder / OUTCOMES)  # before result.json: that marks it done
        return result

    def passes(self, node: Node, counts: dict[str, int]) -> float:
        cfg = node.config
        return get_attack(cfg.attack).passes(cfg.params, cfg.eps or [1.0], cfg.n)  # one budget, chosen or not

    def metrics(self, result: dict) -> dict[str, float]:
        return {k: result[k] for k in ("survivors", "broken")}
