"""`python manage.py reconcile`: database vs chain vs broker; non-zero exit on any discrepancy."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops.reconciliation import Reconciliation, parse_amounts, reconcile

OPENING_CASH_ENV = "BRONCO_BROKER_OPENING_CASH"


class Command(BaseCommand):
    help = (
        "Compare the database, the chain (vault events, settlements, token supplies, USDT) and "
        "the broker (orders, positions, cash); print every discrepancy; exit 1 on any."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--opening-cash",
            default=os.environ.get(OPENING_CASH_ENV, ""),
            help="broker cash before Bronco's first order, e.g. USD=10000000,HKD=50000000 "
            f"(default: ${OPENING_CASH_ENV}); without it cash is not checked",
        )
        parser.add_argument(
            "--stuck-after",
            type=float,
            default=None,
            help="an open order older than this many seconds is stuck "
            "(default: ORDER_DEADLINE_SECONDS + 120)",
        )
        parser.add_argument("--skip-broker", action="store_true", help="database and chain only")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            opening = parse_amounts(options["opening_cash"]) if options["opening_cash"] else None
        except ValueError as exc:
            raise CommandError(f"--opening-cash: {exc}") from exc
        result = reconcile(
            opening_cash=opening,
            stuck_after_seconds=options["stuck_after"],
            check_broker=not options["skip_broker"],
        )
        if options["json"]:
            self.stdout.write(json.dumps(as_dict(result), indent=2, default=str))
        else:
            self.stdout.write(render(result))
        if not result.ok:
            sys.exit(1)


def as_dict(result: Reconciliation) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "discrepancies": [d.__dict__ for d in result.discrepancies],
        "facts": result.facts,
        "notes": result.notes,
    }


def render(result: Reconciliation) -> str:
    facts = result.facts
    lines = [
        f"orders {facts.get('orders', 0)} ({facts.get('in_flight', 0)} in flight), "
        f"vault events: {facts.get('deposit_events', 0)} deposits, "
        f"{facts.get('redeem_events', 0)} redeems, "
        f"{facts.get('settlement_events', 0)} settlements; "
        f"broker orders {facts.get('broker_orders', '-')}; "
        f"audit entries {facts.get('audit_entries', 0)}",
    ]
    lines += [f"note: {n}" for n in result.notes]
    for d in result.discrepancies:
        lines.append(f"DISCREPANCY {d}")
    if result.ok:
        lines.append("reconciliation: OK - database, chain and broker agree")
    else:
        lines.append(f"reconciliation: FAILED - {len(result.discrepancies)} discrepancies")
    return "\n".join(lines)
