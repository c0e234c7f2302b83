"""The top room: one module per `harness` command, each with `add(parser)` (its flags) and `main(args)` (its body).

Only the chosen command's module is imported (harness/cli.py), so `harness --help` is instant and a command's flags
can come from the settings models that declare them (harness/commands/flags.py).
"""

# name -> (module, one line of help); the order `harness --help` lists them in
COMMANDS = {
    "run": ("run", "run a DAG (pretrain, finetune, evaluate, attack) on Ray Tune, logged to MLflow"),
    "plan": ("plan", "what a DAG needs: trainings, evaluations, attacks, how many are cached, and cost"),
    "search": ("search", "hyper-parameter search for fine-tuning per rule (Ray Tune, ASHA); `tune` is its old name"),
    "report": ("report", "tables and figures of an experiment, read from MLflow"),
    "ui": ("ui", "the MLflow UI on an experiment's store (127.0.0.1), with its address"),
    "schema": ("schema", "write the JSON Schema of DAG files (editors complete and check DAGs with it)"),
    "data": ("data", "convert datasets into WebDataset shards once; inspect them"),
    "stage": ("stage", "run one stage (pretrain, finetune, evaluate, attack) directly, without Ray"),
    "bench": ("bench", "measure speed as ratios to a baseline run in the same process"),
}
ALIASES = {"tune": "search"}
