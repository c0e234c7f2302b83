"""`make mutants` summary: mutmut's per-mutant results -> results/mutants/summary.md, with the kill rate per module.

A mutant is detected when a test failed on it (mutmut's "killed") or it made the tests hang ("timeout"). Mutants
listed in results/mutants/equivalent.yaml (mutant name -> why no test can tell it from the original) are left out
of the rate; every other mutant that was not detected counts against it, "no tests" included. The goal is at least
80% per module; the exit code says whether every module reached it.

    python tests/mutation_summary.py [--goal 0.8]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "mutants"
DETECTED = {"killed", "timeout"}


def results() -> dict[str, str]:
    """mutant name -> its status, as `mutmut results --all true` prints them."""
    done = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=ROOT, text=True,
                          capture_output=True, check=True)
    return dict(line.strip().rsplit(": ", 1) for line in done.stdout.splitlines() if ": " in line)


def module_of(mutant: str) -> str:
    return re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]


def diff(mutant: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=ROOT, text=True,
                           capture_output=True)
    return "\n".join(line for line in shown.stdout.splitlines()[1:] if line.startswith(("+", "-"))
                     and not line.startswith(("+++", "---")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", type=float, default=0.8, help="kill rate each module must reach")
    args = parser.parse_args()
    status = results()
    if not status:
        print("no mutmut results: run `make mutants` first", file=sys.stderr)
        return 2
    equivalent = yaml.safe_load((OUT / "equivalent.yaml").read_text()) or {} if (OUT / "equivalent.yaml").is_file() \
        else {}
    unknown = sorted(set(equivalent) - set(status))
    by_module: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    # a mutant some test detects is not equivalent, whatever equivalent.yaml says: counted as detected, and named
    contradicted = sorted(m for m in equivalent if status.get(m) in DETECTED)
    for mutant, state in sorted(status.items()):
        excluded = mutant in equivalent and mutant not in contradicted
        kind = "excluded" if excluded else ("detected" if state in DETECTED else state)
        by_module[module_of(mutant)][kind].append(mutant)
    rows, failing, survivors = [], [], []
    for module, kinds in sorted(by_module.items()):
        # the rate is over the mutants that were run: one the run did not reach is neither caught nor missed, but a
        # module with any of them has not met the goal (the run was cut short)
        unchecked = len(kinds["not checked"])
        counted = sum(len(v) for k, v in kinds.items() if k not in ("excluded", "not checked"))
        detected = len(kinds["detected"])
        rate = detected / counted if counted else 1.0
        missed = {k: len(v) for k, v in kinds.items() if k not in ("detected", "excluded", "not checked") and v}
        rows.append(f"| {module} | {counted + unchecked + len(kinds['excluded'])} | {len(kinds['excluded'])} | "
                    f"{unchecked or '-'} | {detected} | "
                    f"{', '.join(f'{k} {n}' for k, n in sorted(missed.items())) or '-'} | {rate:.1%} |")
        if rate < args.goal or unchecked:
            failing.append(module)
        survivors += [(m, k) for k, v in kinds.items() if k not in ("detected", "excluded", "not checked")
                      for m in v]
    lines = ["# Mutation testing (`make mutants`)", "",
             f"mutmut over the modules `[tool.mutmut]` in pyproject.toml lists; goal: {args.goal:.0%} of the mutants "
             "of each module detected (a test fails, or the tests time out). Equivalent mutants, each with its "
             "reason, are in equivalent.yaml and left out of the rate; so are mutants the run did not reach (not "
             "checked), and a module with any of those has not met the goal.", "",
             "| module | mutants | equivalent | not checked | detected | not detected | rate |",
             "|---|---|---|---|---|---|---|", *rows,
             ""]
    if unknown:
        lines += ["equivalent.yaml names mutants mutmut no longer makes (the code changed): "
                  + ", ".join(unknown), ""]
    if contradicted:
        lines += ["equivalent.yaml names mutants a test detects (so they are not equivalent; counted as detected): "
                  + ", ".join(contradicted), ""]
    lines += ["## Not detected", ""]
    for mutant, state in survivors:
        lines += [f"### {mutant} ({state})", "", "```diff", diff(mutant), "```", ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines[:len(rows) + 6]))
    print(f"written: {OUT / 'summary.md'}")
    if failing:
        print(f"below {args.goal:.0%}: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
