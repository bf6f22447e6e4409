"""The names of the pipeline's stages and what a stage returns. A module of its own, free of
imports, so that services, runs and tasks can name stages without importing the stages."""

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """A pipeline stage. `orders.tasks` maps each to the Celery task that runs it (and so to
    the queue of the resource it waits on)."""

    VALIDATE = "validate"
    SETTLE = "settle"


@dataclass(frozen=True)
class Next:
    """What a stage asks to run next: `stage` after `countdown` seconds."""

    stage: Stage
    countdown: float = 0.0
