"""Run the OpenD simulator: `python manage.py opend_sim --port 11111`."""

from __future__ import annotations

import signal
import threading
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from trading.opend_sim import spreads
from trading.opend_sim.market import DEFAULT_SECURITIES, SimSecurity
from trading.opend_sim.server import OpenDSimulator


class Command(BaseCommand):
    help = "Run a Futu OpenD simulator that the unmodified futu-api SDK can connect to."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.FUTU_OPEND_PORT)
        parser.add_argument(
            "--control-port", type=int, default=0, help="JSON scripting port (0: any free port)"
        )
        parser.add_argument(
            "--state-file", default=None, help="keep state in this JSON file across restarts"
        )
        parser.add_argument("--rate-window", type=float, default=settings.FUTU_RATE_WINDOW_SECONDS)
        parser.add_argument(
            "--walk",
            type=Decimal,
            default=Decimal("0"),
            help="random-walk std-dev per second (0: fixed prices)",
        )
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--trade-password", default=settings.FUTU_TRADE_PASSWORD)
        parser.add_argument(
            "--hk-spread-table",
            choices=sorted(spreads.HK_SPREAD_TABLES),
            default=spreads.DEFAULT_HK_TABLE,
            help="HKEX spread table in force (trading/opend_sim/spreads.py)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        securities = [
            SimSecurity(
                code=s.code, name=s.name, price=s.price, lot_size=s.lot_size, walk=options["walk"]
            )
            for s in DEFAULT_SECURITIES
        ]
        sim = OpenDSimulator(
            host=options["host"],
            port=options["port"],
            control_port=options["control_port"],
            state_file=options["state_file"],
            rate_window=options["rate_window"],
            rate_limits=dict(settings.FUTU_RATE_LIMITS),
            fee_rates=dict(settings.TRADING_FEES),
            trade_password=options["trade_password"],
            securities=securities,
            seed=options["seed"],
            hk_spread_table=options["hk_spread_table"],
        )
        port = sim.start()
        self.stdout.write(
            f"OpenD simulator listening on {options['host']}:{port} "
            f"(control port {sim.control_port}, account {sim.acc_id})"
        )
        self.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        sim.stop()
