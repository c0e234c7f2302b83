"""The third room: from a DAG file to the grid's nodes and what they cost.

- `dag.py`: the whole DAG schema (the grid of harness/config/grid.py with every registered stage's sections and
  the registries' names), `load_dag` and `harness schema`;
- `plan.py`: the nodes, stage by stage, each keyed by what determines its result;
- `cost.py`: image passes per node, weighted by FLOPs, at a measured rate (`harness plan`).
"""
