"""`python manage.py simulate --users 20 --deposits 200 --redeems 50 --cancels 10 --seed 1`:
drive a realistic scenario through a running Bronco, show its progress, report, reconcile.

Needs the system running (listener, workers, beat; `run_stack` starts all of it) on a dev
chain. With OPEND_SIM_CONTROL (host:port of the simulator's control port) it scripts the
OpenD simulator so the symbols fill, half-fill and reject (see devtools.scenario).
Exits 1 when an order did not finish in time or reconciliation finds a discrepancy.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chain.exceptions import ChainError
from chain.models import ChainEvent
from devtools.report import render, run_report
from devtools.scenario import ScenarioDriver, scenario_plan
from ops.management.commands.reconcile import OPENING_CASH_ENV, as_dict
from ops.management.commands.reconcile import render as render_reconciliation
from ops.reconciliation import parse_amounts, reconcile

_BAR = 28
_SHORT = {"PENDING": "pend", "EXECUTING": "exec", "SETTLING": "settl"}


def rate_window_note() -> str:
    window = settings.FUTU_RATE_WINDOW_SECONDS
    place = settings.FUTU_RATE_LIMITS["place"][0]
    if window == 30:
        return f"Futu rate limit: {place} place-order requests per 30 s (Futu's real limit)."
    return (
        f"Futu rate limit shortened for the demo: {place} place-order requests per {window:g} s "
        f"(FUTU_RATE_WINDOW_SECONDS={window:g}, the same in the limiter and the simulator); "
        f"real Futu allows {place} per 30 s, so the same run takes about {30 / window:.0f}x "
        "longer at the broker."
    )


class Command(BaseCommand):
    help = "Drive on-chain users (deposit, cancel, redeem) through the running system; report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, default=20)
        parser.add_argument("--deposits", type=int, default=200)
        parser.add_argument("--redeems", type=int, default=50)
        parser.add_argument("--cancels", type=int, default=10)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--rate", type=float, default=0.0, help="offered deposits per second (0: no pacing)"
        )
        parser.add_argument(
            "--timeout", type=float, default=900.0, help="seconds to wait for every order"
        )
        parser.add_argument(
            "--sim-control",
            default=os.environ.get("OPEND_SIM_CONTROL", ""),
            help="host:port of the OpenD simulator's control port (default $OPEND_SIM_CONTROL)",
        )
        parser.add_argument(
            "--opening-cash",
            default=os.environ.get(OPENING_CASH_ENV, ""),
            help="broker cash before Bronco's first order, for reconciliation",
        )
        parser.add_argument(
            "--mix",
            choices=("demo", "fills", "netting"),
            default="demo",
            help="demo: fills, partial fills, rejections, refusals; fills: every order fills",
        )
        parser.add_argument("--no-reconcile", action="store_true")
        parser.add_argument(
            "--no-session-cases",
            dest="session_cases",
            action="store_false",
            help="skip the closed-market, limit and expiry deposits after the plan",
        )
        parser.add_argument("--json", default="", help="also write the results to this file")

    def handle(self, *args: Any, **options: Any) -> None:
        result = run_scenario(options, write=self.stdout.write, flush=self.stdout.flush)
        if options["json"]:
            path = Path(options["json"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary(result), indent=2, default=str))
        if not result["ok"]:
            sys.exit(1)


def _user_events() -> int:
    """Vault events users caused (the listener also records settlement events)."""
    return ChainEvent.objects.filter(
        chain_id=settings.CHAIN_ID, name__in=("Deposit", "Redeem", "CancelRequested")
    ).count()


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of `run_scenario`'s result."""
    return {k: v for k, v in result.items() if k not in ("orders", "log_times", "sent_records")}


def _sim(address: str) -> Any:
    if not address:
        return None
    from trading.opend_sim.server import SimulatorControl

    host, _, port = address.rpartition(":")
    control = SimulatorControl(host or "127.0.0.1", int(port))
    control.ping()
    return control


def run_scenario(options: dict[str, Any], *, write: Any, flush: Any = None) -> dict[str, Any]:
    """Plan, fund, script, send, wait, report and reconcile. Returns the results (also what
    bench/e2e.py records)."""
    plan = scenario_plan(
        users=options["users"],
        deposits=options["deposits"],
        redeems=options["redeems"],
        cancels=options["cancels"],
        seed=options["seed"],
        mix=options.get("mix", "demo"),
    )
    try:
        sim = _sim(options["sim_control"])
    except (OSError, RuntimeError, ValueError) as exc:
        raise CommandError(f"simulator control {options['sim_control']}: {exc}") from exc
    driver = ScenarioDriver(
        plan, rate=options["rate"], sim_control=sim, mix=options.get("mix", "demo")
    )
    write(
        f"Scenario: {len(plan.users)} users, {plan.deposits} deposits ({plan.cancels} with a "
        f"cancel request), {plan.redeems} redeems, seed {plan.seed}, "
        + (f"offered {options['rate']:g} deposits/s" if options["rate"] else "unpaced")
    )
    write(rate_window_note())
    write(f"Order deadline: {settings.ORDER_DEADLINE_SECONDS} s (ORDER_DEADLINE_SECONDS).")
    for line in driver.script_simulator():
        write(f"  {line}")
    driver.fund_users()
    write(f"Funded and approved {len(plan.keys)} users on chain {settings.CHAIN_ID}.")

    events_before = _user_events()
    sender = threading.Thread(target=driver.send_all, name="scenario-sender", daemon=True)
    started = time.time()
    sender.start()
    total = plan.deposits + plan.redeems
    progress = _Progress(write, flush, total=total)
    deadline = time.monotonic() + options["timeout"]
    finished = False
    while True:
        time.sleep(0.5)
        sending = sender.is_alive()
        counts = driver.status_counts()
        events = _user_events() - events_before
        progress.show(sent=len(driver.state.sent), events=events, counts=counts, started=started)
        if not sending and driver.finished(counts):
            finished = True
            break
        if time.monotonic() > deadline:
            break
    progress.done()
    # The demo shows sessions and terms; benchmarks (other mixes) measure the plan alone.
    if finished and options.get("session_cases", options.get("mix", "demo") == "demo"):
        write("\nSessions and user terms (the simulator's clock and AAPL's price scripted)")
        try:
            for line in driver.session_cases(timeout=options["timeout"]):
                write(f"  {line}")
        except ChainError as exc:
            finished = False
            write(f"  session cases failed: {exc}")
    elapsed = time.time() - started
    state = driver.state
    orders = driver.orders()
    keys = {(s.kind, s.onchain_id): s for s in state.sent}
    log_times = {
        o.pk: keys[("deposit" if o.order_type == "BUY" else "redeem", int(o.onchain_id))].sent_at
        for o in orders
        if ("deposit" if o.order_type == "BUY" else "redeem", int(o.onchain_id)) in keys
    }
    report = run_report(orders, log_times=log_times)
    write("")
    write(render(report))
    for line in state.errors:
        write(f"error: {line}")
    for line in state.skipped:
        write(f"skipped: {line}")
    if not finished:
        open_orders = [o for o in orders if not o.is_terminal]
        write(
            f"NOT FINISHED after {options['timeout']:.0f} s: {len(open_orders)} open orders, "
            f"{len(state.order_keys()) - len(orders)} events without an order yet"
        )
    write(f"\n{rate_window_note()}")

    verdict: dict[str, Any] = {"ok": True, "skipped": True}
    if not options["no_reconcile"]:
        opening = parse_amounts(options["opening_cash"]) if options["opening_cash"] else None
        reconciliation = reconcile(opening_cash=opening)
        verdict = as_dict(reconciliation)
        write("\nReconciliation (database vs chain vs broker)")
        write(render_reconciliation(reconciliation))
    deposits_sent = sum(s.kind == "deposit" for s in state.sent)
    sending_span = max(state.sending_done_at - state.started_at, 1e-9)
    return {
        "ok": finished and not state.errors and verdict["ok"],
        "finished": finished,
        "elapsed_seconds": round(elapsed, 2),
        "sent": {
            kind: sum(s.kind == kind for s in state.sent)
            for kind in ("deposit", "redeem", "cancel")
        },
        "offered_rate": options["rate"],
        "achieved_send_rate": round(deposits_sent / sending_span, 3),
        "errors": state.errors,
        "skipped": state.skipped,
        "report": report.as_dict(),
        "reconciliation": verdict,
        "rate_window_seconds": settings.FUTU_RATE_WINDOW_SECONDS,
        "order_deadline_seconds": settings.ORDER_DEADLINE_SECONDS,
        "orders": orders,
        "log_times": log_times,
        "sent_records": state.sent,
    }


class _Progress:
    """A one-line progress bar on a terminal; a line every 5 s otherwise (logs, CI)."""

    def __init__(self, write: Any, flush: Any, *, total: int) -> None:
        self.write, self.flush, self.total = write, flush, max(total, 1)
        self.tty = sys.stdout.isatty()
        self._last_plain = 0.0
        self._width = 0

    def show(self, *, sent: int, events: int, counts: dict[str, int], started: float) -> None:
        done = counts["EXECUTED"] + counts["CANCELED"] + counts["FAILED"]
        filled = int(_BAR * done / self.total)
        bar = "#" * filled + "-" * (_BAR - filled)
        elapsed = int(time.time() - started)
        opened = " ".join(f"{_SHORT[s]} {counts[s]}" for s in ("PENDING", "EXECUTING", "SETTLING"))
        line = (
            f"[{bar}] {done}/{self.total} done | sent {sent} | events {events} | {opened} | "
            f"executed {counts['EXECUTED']} canceled {counts['CANCELED']} failed "
            f"{counts['FAILED']} | {elapsed // 60:02d}:{elapsed % 60:02d}"
        )
        if self.tty:
            pad = max(self._width - len(line), 0)
            sys.stdout.write("\r" + line + " " * pad)
            sys.stdout.flush()
            self._width = len(line)
        elif time.monotonic() - self._last_plain >= 5:
            self._last_plain = time.monotonic()
            self.write(line)
            if self.flush:
                self.flush()

    def done(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()
