"""The run that tests/devtools/test_no_orphans.py kills: a pytest session that brings up the
e2e stack (anvil, the OpenD simulator, an OpenBao dev server, a real Celery worker with its
prefork pool, beat and the listener), says so in BRONCO_READY_FILE, then waits to be killed.

Its name has no `test_` prefix, so a plain `pytest` never collects it; the killing test
names it on the command line.
"""

import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import e2e_sim, stack, wait_until  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_stack_up_until_killed(stack, vault_server):  # noqa: F811 - the imported fixture
    from bronco_project.celery import app

    stack.start_worker(concurrency=2)
    stack.start_beat()
    stack.start_listener()
    wait_until(lambda: app.control.ping(timeout=1.0), timeout=90, what="the worker's ping")
    Path(os.environ["BRONCO_READY_FILE"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("BRONCO_WAIT_TO_BE_KILLED", "300")))
