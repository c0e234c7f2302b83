"""The fifth room: reading a finished grid back and deciding what it says.

- `runs.py`: an experiment's node runs, rows and per-image outcomes, read from MLflow only;
- `outcomes.py`: per-image outcomes at a budget, the worst case, estimates with their intervals;
- `checks.py` and `verdicts.py`: the checklist and each cell's two answers, robustness against the baseline and
  gradient honesty (docs/evaluation.md); `curves.py`: the robustness curve, the worst case at every budget;
- `stats.py`: the tests and intervals behind every number, from scipy and statsmodels;
- `report.py`: the files of results/EXPERIMENT/ (`harness report`); `ui.py`: the MLflow UI (`harness ui`).
"""
