"""Developer machine: the base defaults as they are."""

from bronco_project.settings.base import *  # noqa: F403
