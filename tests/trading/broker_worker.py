"""A separate broker client process for the crash and burst tests: it reaches the
simulator over TCP through Django settings taken from the environment, exactly as a
Celery worker would.

    python -m tests.trading.broker_worker place CLIENT_ID CODE QTY PRICE [--crash]
    python -m tests.trading.broker_worker burst PREFIX COUNT CODE PRICE
"""

from __future__ import annotations

import json
import os
import sys
import time
from decimal import Decimal


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bronco_project.settings.test")
    import django

    django.setup()
    from trading.exceptions import RateLimited
    from trading.services import broker_place_order

    cmd = argv[0]
    if cmd == "place":
        client_id, code, qty, price = argv[1:5]
        order = broker_place_order(
            client_id=client_id, code=code, side="BUY", qty=Decimal(qty), limit_price=Decimal(price)
        )
        if "--crash" in argv:
            # Futu accepted the order; the process dies before anything is saved.
            os._exit(17)
        print(json.dumps({"order_id": order.broker_order_id}))
        return 0
    if cmd == "burst":
        prefix, count, code, price = argv[1], int(argv[2]), argv[3], argv[4]
        placed, waits = [], 0
        for i in range(count):
            while True:
                try:
                    order = broker_place_order(
                        client_id=f"{prefix}-{i}",
                        code=code,
                        side="BUY",
                        qty=Decimal(1),
                        limit_price=Decimal(price),
                    )
                    placed.append(order.broker_order_id)
                    break
                except RateLimited as exc:  # the Celery task would re-schedule
                    waits += 1
                    time.sleep(exc.retry_after)
        print(json.dumps({"placed": placed, "waits": waits}))
        return 0
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
