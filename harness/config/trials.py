"""How trials run, as a DAG says it: what each stage's trials ask Ray for, retries and concurrency.

Read by harness/execution/raytune.py. `resources` has one entry per resource group the registered stages name
(`Stage.resource_group`: pretrain, finetune, evaluate, attack; the convergence re-run shares attack's), so a new stage
gets its own entry by declaring it; `resources_section` builds that section from the names.
"""

from __future__ import annotations

import functools
from typing import Annotated

from pydantic import Field, SerializeAsAny, create_model

from workloads.settings import Section


class TrialResources(Section):
    cpu: Annotated[float, Field(ge=0.01, le=1024)] = 1
    """CPUs per trial; torch uses this many threads in it."""
    gpu: Annotated[float, Field(ge=0, le=64)] = 0
    """GPUs per trial (0.25 packs four trials on one GPU); ignored on a cluster without GPUs."""


@functools.cache
def resources_section(groups: tuple[str, ...]) -> type[Section]:
    """The `resources` section: a TrialResources entry per resource group."""
    return create_model("Resources", __base__=Section, __doc__="What each trial of a stage asks Ray for.",
                        **{g: (TrialResources, TrialResources()) for g in groups})


class TrialSettings(Section):
    resources: SerializeAsAny[Section] = Section()  # `resources_section(...)`, once the stages are known
    """What each trial of a stage asks Ray for."""
    retries: Annotated[int, Field(ge=0, le=100)] = 1
    """Tune restarts a trial whose worker or node died this many times (a stage that raises is not retried)."""
    max_concurrent: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Trials at once (0: as many as the resources allow)."""

    def resources_of(self, group: str) -> TrialResources:
        return getattr(self.resources, group, None) or TrialResources()
