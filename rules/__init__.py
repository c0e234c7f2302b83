"""Learning rules for the error a layer sends down: bp, fa, usf, frsf, brsf (docs/protocol.md, "Learning rules").

    handle = rules.attach(model, "frsf", seed=0)   # hooks on every Conv/Linear
    loss.backward()                                  # weight grads exact, errors sent down with B
    with handle.exact(): ...                         # exact gradients for a block (white-box 'exact' attacks)
    handle.state_dict() / attach(..., state=...)     # the rule's random state, saved with the checkpoint
    handle.detach()                                  # plain autograd again

This package imports neither Ray nor MLflow.
"""

# isort: off
# Each import registers a rule; their order is the order tables list the rules in: exact, random, then the sign
# rules by how much of B is random.
from rules import bp, fa, usf, frsf, brsf  # noqa: F401
# isort: on
from rules.base import Layer, Rule
from rules.handle import RuleHandle, attach, handle_of
from rules.registry import available_rules, get_rule, ordered_rules, register_rule

__all__ = ["Layer", "Rule", "RuleHandle", "attach", "available_rules", "get_rule", "handle_of", "ordered_rules",
           "register_rule"]
