"""Names shared by the stages, the tracking, the report and the tests: grid axes, metrics, units of work.

A metric name is a key of a stage's result and, in MLflow, a metric of the node's run (`robust_acc/eps_0.1` for
an attack's rows). The names are plain strings (not Enum members): they go into checkpoints, which load with
`torch.load(weights_only=True)` and so may hold only built-in types.
"""

from __future__ import annotations


class Passes:
    """Units of work, in forward-equivalent image passes: what `harness plan` counts a grid's cost in."""

    FORWARD = 1.0  # one image through the model
    GRAD = 2.0  # a forward and the gradient with respect to the input (an attack step)
    TRAIN = 3.0  # a forward and the gradients with respect to the input and the weights (a training step)


# what the report groups by: the tags `axis.<name>` of every node's MLflow run
AXES = ("dataset", "backbone", "seed", "task", "rule", "attack", "source")


class Metric:
    # clean, from evaluation
    TOP1 = "top1"
    MAP = "map"
    LOSS = "loss"
    N = "n"
    # per eps point of an attack
    ROBUST_ACC = "robust_acc"
    CLEAN_ACC = "clean_acc"
    CLEAN_MAP = "clean_map"
    SUCCESS_RATE = "success_rate"
    HAMMING = "hamming"
    LINF = "linf"
    L2 = "l2"
    QUERIES = "queries"
    # minimal-perturbation (decision) attacks, the same on every row
    MEDIAN_LINF = "median_linf"
    MEDIAN_L2 = "median_l2"
    FOUND = "found"
    START_QUERIES = "start_queries"  # a decision attack's starting-point search, per image
    OWN_QUERIES = "own_queries"  # its own queries after that, per image it attacked
    # diagnostics of a model under its rule
    GRAD_COSINE = "input_grad_cosine_mean"
    ANGLE = "angle_mean_deg"
