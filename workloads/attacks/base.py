"""The attack contract: what an attack needs, which tasks it fits, its parameters, and how it crafts examples.

An attack is crafted against a *crafting model* and scored on the *target model*. The gradient source decides
the crafting model (docs/protocol.md, "Attacks"):
- `rule`: the target as trained, differentiated through its rule's backward (the paper's protocol);
- `exact`: the same weights with exact autograd (`handle.exact()`): the honest white-box number;
- `transfer`: the sibling fine-tuned with the baseline rule (bp by default; same backbone, data, task, seed); the
  examples are then scored on the target.

Families:
- `gradient`: white-box on a classifier (fgsm, pgd, apgd, autoattack); takes a gradient source;
- `hashing`: white-box on a hashing model (hag, sdha); takes a gradient source;
- `score`: queries output scores only (square); no gradient source;
- `decision`: queries the predicted label only and *minimises* the perturbation (boundary, hsja).

Apart from its family, an attack is *minimal* when it searches for each image's smallest breaking perturbation
instead of attacking at one budget: the decision attacks, and the white-box `fmn` (minimal.py), which takes a
gradient source. One run gives the whole eps curve (an image counts as robust at eps when no adversarial was found
within eps) and each image's radius.

Every attack measures its budget in one norm: L-inf for all but Boundary, which minimises L2 (its eps grid is then
an L2 grid: distances in [0, 1] pixel space over the whole image, e.g. [0, 0.5, 1, 2] for 3x32x32). Tables and
verdicts never mix the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import torch
from pydantic import AfterValidator, Field

from workloads.errors import ConfigError
from workloads.names import Passes
from workloads.settings import Section, validate

GRADIENT_SOURCES = ("rule", "exact", "transfer")
FAMILIES = ("gradient", "hashing", "score", "decision")
NORMS = ("linf", "l2")
# iterations, queries, restarts: far beyond any published setting, short of running for years
Steps = Annotated[int, Field(ge=0, le=10**7)]

# craft(x, y) -> x_adv in [0, 1]; minimal attacks return (x_adv, found) with found a bool per image
Craft = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AttackContext:
    """What an attack may need besides the model: the task, and for retrieval attacks the attacker's database."""

    task: object
    seed: int = 0
    # (codes in {-1, +1}, labels) of retrieval items as the *crafting* model encodes them (SDHA's relevant sets)
    references: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class AttackSpec:
    name: str
    family: str
    tasks: tuple[str, ...]  # task kinds it applies to
    # (crafting model, eps (None for minimal attacks), params, context) -> craft
    builder: Callable[[torch.nn.Module, float | None, Section, AttackContext], Craft]
    # the attack's own parameters, each with its default, range and a docstring (what a DAG's `params` takes)
    params: type[Section] = Section
    description: str = ""
    norm: str = "linf"
    """The norm its budgets are measured in; an attack whose params have a `constraint` takes that one (HSJA)."""
    single_step: bool = False
    """One gradient step (FGSM): the verdicts ask whether it beats the iterative attacks, a sign of obfuscation."""
    minimal: bool = field(default=False, kw_only=True)
    """Minimum-norm: run once (craft(x, y) -> (x_adv, found)), read every eps point off the perturbation sizes."""
    cost: Callable[[Section], float] = field(kw_only=True)
    """Forward-equivalent image passes (`workloads.names.Passes`) one image costs at one budget with these
    parameters; for a minimal-perturbation attack, its whole run. What `harness plan` counts."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"attack {self.name!r}: family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.norm not in NORMS:
            raise ValueError(f"attack {self.name!r}: norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.family == "decision" and not self.minimal:
            raise ValueError(f"attack {self.name!r}: a decision attack minimises its perturbation (minimal=True)")

    def norm_of(self, params: dict | Section | None = None) -> str:
        """The norm of its budgets with these parameters."""
        return getattr(self.parse(params), "constraint", self.norm)

    @property
    def defaults(self) -> dict:
        return self.params().model_dump()

    def parse(self, params: dict | Section | None, where: str = "") -> Section:
        """`params` checked against the attack's own, defaults filled in."""
        if isinstance(params, self.params):
            return params
        return validate(self.params, params or {}, where or f"attack {self.name!r} params")

    def build(self, model: torch.nn.Module, eps: float | None, params: dict | Section | None,
              ctx: AttackContext) -> Craft:
        """The craft function against `model` at budget `eps` (None for a minimal attack)."""
        return self.builder(model, eps, self.parse(params), ctx)

    def check(self, task_kind: str | None, source: str | None, eps_grid: list[float],
              params: dict | Section | None = None) -> tuple[list[float], Section]:
        """The one check of a use of this attack: it applies to the task kind (None: not known yet), the gradient
        source fits its family, the parameters are its own and the budgets are in its norm. Returns the budgets as
        floats and the parameters with their defaults."""
        if task_kind is not None:
            self.check_task(task_kind)
        if self.needs_gradient_source:
            if source not in GRADIENT_SOURCES:
                raise ConfigError(f"gradient source {source!r} for {self.name!r}: choose one of "
                                  f"{', '.join(GRADIENT_SOURCES)}")
        elif source not in (None, "none"):
            raise ConfigError(f"{self.name!r} queries outputs only; it takes no gradient source (got {source!r})")
        params = self.parse(params)
        return check_eps(eps_grid, self.norm_of(params)), params

    def check_task(self, task_kind: str) -> None:
        """It applies to models of this task kind."""
        if task_kind not in self.tasks:
            raise ConfigError(f"attack {self.name!r} does not apply to a {task_kind} model (it applies to: "
                              f"{', '.join(self.tasks)})")

    def passes(self, params: dict | Section | None, eps_grid: list[float], n: int) -> float:
        """Image passes of one run on `n` images over `eps_grid` (a clean budget costs nothing)."""
        points = 1 if self.minimal else sum(1 for e in eps_grid if e > 0)
        return points * n * self.cost(self.parse(params))

    @property
    def needs_gradient_source(self) -> bool:
        return self.family in ("gradient", "hashing")


def check_eps(eps_grid: list[float], norm: str = "linf") -> list[float]:
    """The grid as floats, each a budget >= 0 in [0, 1] pixel space (an L-inf one at most 1); a ConfigError
    otherwise."""
    out = []
    for e in eps_grid:
        try:
            e = float(e)
        except (TypeError, ValueError):
            raise ConfigError(f"eps {e!r} is not a number: budgets are {norm} distances in [0, 1] pixel space") \
                from None
        if not (0.0 <= e <= 1.0 if norm == "linf" else 0.0 <= e < float("inf")):
            raise ConfigError(f"eps {e} is outside {'[0, 1]' if norm == 'linf' else '[0, inf)'}: budgets are "
                              f"{norm} distances in [0, 1] pixel space")
        out.append(e)
    if not out:
        raise ConfigError("the eps grid is empty: give at least one budget, e.g. [0, 0.05, 0.1]")
    return out


# an eps grid in a DAG: checked here as any norm's, and against the attack's own norm by the entry that holds it
Budgets = Annotated[list[float], AfterValidator(lambda grid: check_eps(grid, "l2")), Field(
    description="budgets in [0, 1] pixel space, in the attack's norm: L-inf (at most 1) for all but Boundary, "
                "whose grid is L2, e.g. [0, 0.05, 0.1] or [0, 0.5, 1, 2]; 0 is the clean number",
    json_schema_extra={"items": {"type": "number", "minimum": 0}, "minItems": 1})]


def require_sibling(source: str | None, sibling: object | None) -> None:
    """A transfer attack crafts on the baseline's twin: refuse to start without it."""
    if source == "transfer" and sibling is None:
        raise ConfigError("gradient source 'transfer' needs the sibling fine-tuned with the baseline rule "
                          "(sibling=...)")


def gradient_cost(steps: int, restarts: int = 1) -> float:
    """Passes per image of an iterative white-box attack: a forward and an input gradient per step, and the final
    scoring forward."""
    return steps * restarts * Passes.GRAD + Passes.FORWARD


def restarted(craft: Craft, model: torch.nn.Module, restarts: int) -> Craft:
    """`craft` run up to `restarts` times, each time on the images the runs before left correctly classified (by the
    crafting model): fresh random starts find what one start misses, at the cost of the survivors only."""
    if restarts <= 1:
        return craft

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = craft(x, y)
        for _ in range(restarts - 1):
            with torch.no_grad():
                todo = (model(best).argmax(1) == y).nonzero().flatten()
            if len(todo) == 0:
                break
            best[todo] = craft(x[todo], y[todo])
        return best

    return run


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the L-inf ball of radius eps around x, then into [0, 1] (after every step of a hand-written attack)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
