"""The first room: what a DAG file may say before any stage is known, and how files and flags become one tree.

- `overrides.py`: YAML files merged in order, then `--set KEY=VALUE`, the same way for every command;
- `grid.py`: `DagConfig`, the grid's axes and the keys every DAG has; each stage adds its own sections
  (harness/planning/dag.py assembles the whole schema);
- `trials.py`, `verdicts.py`: the sections of the execution and analysis rooms that a DAG sets;
- `plugins.py`: a user's own modules, imported before anything reads a registry.
Nothing here imports Ray, MLflow, polars, scipy or matplotlib.
"""
