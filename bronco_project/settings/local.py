"""Developer machine: the base defaults as they are."""

from bronco_project.settings.base import *  # noqa: F403

# The local stack and the demo (run_stack, simulate, anvil) exist only on developer machines.
INSTALLED_APPS = [*INSTALLED_APPS, "devtools"]  # noqa: F405
