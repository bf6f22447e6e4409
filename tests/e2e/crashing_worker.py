"""A Celery worker whose child process dies by SIGKILL right after the broker accepted the
first order and before the database saved it: the crash at an exact line that no real test
could time. The patch wraps the real call (the order really reaches the simulator) and is
the only thing that differs from `celery -A bronco_project worker`.

Usage: python -m tests.e2e.crashing_worker <celery worker args...>
(BRONCO_CRASH_MARKER names the file that records the one crash).
"""

import os
import signal
import sys
from pathlib import Path


def main() -> None:
    import django

    django.setup()
    from trading import services

    marker = Path(os.environ["BRONCO_CRASH_MARKER"])
    real_place = services.broker_place_order

    def place_then_die(**kwargs):  # type: ignore[no-untyped-def]
        placed = real_place(**kwargs)
        if not marker.exists():
            marker.write_text(f"{kwargs['client_id']} {placed.broker_order_id}")
            os.kill(os.getpid(), signal.SIGKILL)
        return placed

    services.broker_place_order = place_then_die

    from bronco_project.celery import app

    app.worker_main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    main()
