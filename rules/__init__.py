"""Learning rules for the error a layer sends down: bp, fa, usf, frsf, brsf (PROTOCOL.md section 2).

    handle = rules.attach(model, "frsf", seed=0)   # hooks on every Conv/Linear
    loss.backward()                                  # weight grads exact, errors sent down with B
    with handle.exact(): ...                         # exact gradients for a block (white-box 'exact' attacks)
    handle.state_dict() / attach(..., state=...)     # the rule's random state, saved with the checkpoint
    handle.detach()                                  # plain autograd again

This package imports neither Ray nor MLflow.
"""

from rules import bp, brsf, fa, frsf, usf  # noqa: F401  (each registers itself)
from rules.base import Layer, Rule
from rules.handle import RuleHandle, attach, handle_of
from rules.registry import available_rules, get_rule, register_rule

__all__ = ["Layer", "Rule", "RuleHandle", "attach", "available_rules", "get_rule", "handle_of", "register_rule"]
