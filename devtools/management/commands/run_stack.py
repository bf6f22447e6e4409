"""`python manage.py run_stack [--once] [--fresh] [scenario options]`: the whole system on this
machine (devtools.stack), then the demo scenario (`manage.py simulate`), then serve
the admin and Flower until Ctrl-C. `make run` runs this; `make run ARGS=--once` exits after
the report, non-zero when the scenario did not finish or reconciliation failed.

Supervision (devtools.processes.RestartPolicy): a process that dies is restarted after a
backoff, logged, counted in /metrics (`bronco_process_restarts{process=...}`) and raised as
the alert `stack:restarted:<name>`; the stack stops only on Ctrl-C / SIGTERM or a crash loop
(more than `--max-restarts` restarts of one process within `--restart-window` seconds: alert
`stack:crash_loop`, exit 1)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from devtools.processes import ChildFailed, RestartPolicy, spawn
from devtools.stack import MANAGE, DevStack, StackConfig, StackError, rpc_port


class Command(BaseCommand):
    help = (
        "Start anvil, OpenBao, the OpenD simulator, web, workers, beat, the listener and "
        "Flower; run the demo scenario; serve until Ctrl-C (or exit after it with --once)."
    )
    requires_system_checks: list = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="exit after the scenario's report")
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="drop and re-create the database and start a new chain and broker account",
        )
        parser.add_argument("--no-scenario", action="store_true", help="only start the system")
        scenario = parser.add_argument_group("scenario (manage.py simulate)")
        scenario.add_argument("--users", type=int, default=20)
        scenario.add_argument("--deposits", type=int, default=200)
        scenario.add_argument("--redeems", type=int, default=50)
        scenario.add_argument("--cancels", type=int, default=10)
        scenario.add_argument("--seed", type=int, default=1)
        scenario.add_argument("--rate", type=float, default=0.0, help="offered deposits/s")
        scenario.add_argument("--timeout", type=float, default=900.0)
        scenario.add_argument("--json", default="", help="write the scenario results here")
        demo = parser.add_argument_group("demo settings")
        demo.add_argument(
            "--rate-window",
            type=float,
            default=30.0,
            help="FUTU_RATE_WINDOW_SECONDS for the simulator and the limiter (Futu's own: 30; "
            "netting keeps the demo within it)",
        )
        demo.add_argument(
            "--deadline", type=int, default=60, help="ORDER_DEADLINE_SECONDS (default 60)"
        )
        ports = parser.add_argument_group("ports (0: any free port)")
        ports.add_argument("--web-port", type=int, default=8000)
        ports.add_argument("--flower-port", type=int, default=settings.FLOWER_PORT)
        ports.add_argument("--anvil-port", type=int, default=rpc_port(settings.CHAIN_RPC_URL, 8545))
        ports.add_argument("--opend-port", type=int, default=settings.FUTU_OPEND_PORT)
        ports.add_argument("--opend-control-port", type=int, default=0)
        ports.add_argument("--vault-port", type=int, default=8200)
        parser.add_argument("--var-dir", default="var", help="state and logs (default var/)")
        supervision = parser.add_argument_group("supervision")
        supervision.add_argument("--max-restarts", type=int, default=5)
        supervision.add_argument("--restart-window", type=float, default=60.0)

    def handle(self, *args: Any, **options: Any) -> None:
        config = StackConfig(
            var_dir=Path(options["var_dir"]),
            web_port=options["web_port"],
            flower_port=options["flower_port"],
            anvil_port=options["anvil_port"],
            opend_port=options["opend_port"],
            opend_control_port=options["opend_control_port"],
            vault_port=options["vault_port"],
            rate_window=options["rate_window"],
            deadline=options["deadline"],
            fresh=options["fresh"],
        )
        policy = RestartPolicy(
            max_restarts=options["max_restarts"], window=options["restart_window"]
        )
        stack = DevStack(config, out=self._say, policy=policy)
        # Ctrl-C reaches the `finally` below (trading.futu_sdk undid the futu SDK's handler);
        # SIGTERM (docker stop, a CI timeout) stops the children the same way.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        code = 0
        try:
            stack.up()
            if not options["no_scenario"]:
                code = self._scenario(stack, options)
            self._banner(stack)
            if not options["once"]:
                code = self._serve(stack) or code
        except (StackError, ChildFailed) as exc:
            self.stderr.write(f"run_stack: {exc}")
            code = 2
        except KeyboardInterrupt:
            self._say("\nStopping...")
        finally:
            stack.down()
        self._say("Every process stopped.")
        if code:
            sys.exit(code)

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def _scenario(self, stack: DevStack, options: dict[str, Any]) -> int:
        argv = [
            *MANAGE,
            "simulate",
            *("--users", str(options["users"])),
            *("--deposits", str(options["deposits"])),
            *("--redeems", str(options["redeems"])),
            *("--cancels", str(options["cancels"])),
            *("--seed", str(options["seed"])),
            *("--rate", str(options["rate"])),
            *("--timeout", str(options["timeout"])),
        ]
        if options["json"]:
            argv += ["--json", options["json"]]
        self._say("\n" + " ".join(argv[1:]))
        proc = spawn(argv, cwd=stack.root, env=stack.env)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                stack.supervise()  # restarts what died; raises on a crash loop
        except (KeyboardInterrupt, ChildFailed):
            proc.terminate()
            proc.wait(timeout=30)
            raise
        return proc.returncode

    def _banner(self, stack: DevStack) -> None:
        info = stack.info
        lines = [
            "",
            "Bronco is running:",
            f"  admin   {info.web_url}/admin/   login {info.admin_user} / {info.admin_password}",
            f"  flower  {info.flower_url}/   basic auth {info.flower_auth}"
            + (
                " (generated; set FLOWER_BASIC_AUTH to choose)"
                if info.flower_auth_generated
                else ""
            ),
            f"  metrics {info.web_url}/metrics   health {info.web_url}/health",
            f"  api     {info.web_url}/api/v1/   docs {info.web_url}/api/v1/docs   "
            f"status page {info.web_url}/track/",
            f"  chain   {info.anvil_url}   OpenD simulator {info.opend} "
            f"(control {info.opend_control})   OpenBao {info.vault_addr}",
            f"  logs    {stack.var / 'log'}/<name>.log",
            f"  demo settings: FUTU_RATE_WINDOW_SECONDS={stack.config.rate_window:g} (Futu: 30), "
            f"ORDER_DEADLINE_SECONDS={stack.config.deadline}",
        ]
        for line in lines:
            self._say(line)

    def _serve(self, stack: DevStack) -> int:
        self._say(f"Serving until Ctrl-C. Supervision: {stack.supervisor.policy.describe()}.")
        while True:
            time.sleep(0.5)
            try:
                stack.supervise()
            except ChildFailed as exc:
                self.stderr.write(f"run_stack: {exc}\nrun_stack: stopping everything")
                return 1


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
