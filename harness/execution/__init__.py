"""The fourth room: running the nodes a plan needs, and recording them.

- `store.py`: the artifact store, one folder per node, complete once `result.json` exists (the cache and resume);
- `runner.py`: one node to completion, without Ray (tests and notebooks call it directly);
- `raytune.py`: Ray and Ray Tune, set up once for every command that runs trials;
- `orchestrator.py`: `harness run`: a Tune run per stage, in the order of their levels, over the
  nodes not in the store;
- `tracking.py`: MLflow, written from the driver only;
- `unchanged.py`: a `harness run` whose inputs are unchanged answers at once, from a stamp of the last one;
- `allocator.py`: the process-wide malloc setting that keeps PyTorch on the CPU fast;
- `interrupts.py`: Ctrl-C, SIGTERM and SIGHUP, raised at once, or inside a Tune run once Tune has stopped its trials.
"""
