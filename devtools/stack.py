"""The whole system on one machine, for `manage.py run_stack` (and so `make run`).

Brings up, in order, each waited for until it answers: anvil (chain state kept in
var/chain), an OpenBao dev server (seeded with the secrets; children read them through a
read-only token), the OpenD simulator (state kept in var/opend), the contracts (deployed
once, reused after), migrations, a dev superuser, then web, one Celery worker per queue,
beat, the listener and Flower. Every child logs to var/log/<name>.log and gets its whole
configuration from the environment, as in production.

State: the database, var/chain and var/opend belong together. A database with no
deployment means a fresh start (stale chain and broker state are removed with it); a
database whose vault is gone from the chain cannot be reconciled with anything, so the
stack refuses and says how to start over (`--fresh` drops and re-creates the database).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import hvac
import psycopg2
import redis
import requests
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from chain.client import ChainClient
from core.db import maintenance_connection
from devtools.processes import (
    Child,
    ChildFailed,
    PortTaken,
    RestartPolicy,
    Supervisor,
    free_port,
)

PY = sys.executable
MANAGE = [PY, "manage.py"]
CELERY = [PY, "-m", "celery", "-A", "bronco_project"]
# The simulator starts every account with this cash (trading.opend_sim.market).
SIM_OPENING_CASH = "USD=10000000,HKD=50000000"
# (queue, concurrency): a worker per queue, so a slow broker never starves settlement. The
# chain worker's tasks mostly wait (on the node's answers, on row, nonce and audit locks): 4
# processes overlap those waits on 2 cores (bench/e2e.py at 200/s: settle p50 9.3 -> 2.9 s).
WORKERS = (("broker", 2), ("chain", 4), ("default", 2))
SECRET_NAMES = ("futu_trade_password", "operator_private_key")
_VAULT_POLICY = "bronco-read"


class StackError(Exception):
    """The stack cannot start; the message says why and what to do."""


@dataclass
class StackConfig:
    var_dir: Path
    web_port: int = 8000
    flower_port: int = 5555
    anvil_port: int = 8545
    opend_port: int = 11111
    opend_control_port: int = 0
    vault_port: int = 8200
    rate_window: float = 30.0
    deadline: int = 60
    fresh: bool = False
    admin_user: str = "admin"

    @classmethod
    def on_ports(cls, ports: dict[str, int], **options) -> StackConfig:
        """A fresh stack on the ports of `devtools.processes.stack_environment`."""
        return cls(
            web_port=ports["web"],
            flower_port=ports["flower"],
            anvil_port=ports["anvil"],
            opend_port=ports["opend"],
            opend_control_port=ports["control"],
            vault_port=ports["vault"],
            fresh=True,
            **options,
        )


@dataclass
class StackInfo:
    """What the stack prints for its user."""

    web_url: str = ""
    flower_url: str = ""
    flower_auth: str = ""
    flower_auth_generated: bool = False
    admin_user: str = ""
    admin_password: str = ""
    vault_addr: str = ""
    anvil_url: str = ""
    opend: str = ""
    opend_control: str = ""
    vault: str = ""
    contracts: list[str] = field(default_factory=list)


class DevStack:
    def __init__(
        self,
        config: StackConfig,
        *,
        out: Callable[[str], None] = print,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.config = config
        self.out = out
        self.root = Path(settings.BASE_DIR)
        self.var = config.var_dir if config.var_dir.is_absolute() else self.root / config.var_dir
        self.supervisor = Supervisor(
            log_dir=self.var / "log",
            cwd=self.root,
            policy=policy or RestartPolicy(),
            on_restart=self._restarted,
            log=out,
        )
        self.info = StackInfo()
        self.env: dict[str, str] = {}
        self._vault_root_token = ""

    # --- supervision -----------------------------------------------------------------
    def supervise(self) -> list[Child]:
        """One supervision pass (see Supervisor.check and RestartPolicy): dead services are
        started again after their backoff, counted in /metrics (bronco_process_restarts)
        and raised as an alert; raises CrashLoop (the stack must stop) past the policy."""
        from core.alerts import alert_raise
        from core.models import AlertSeverity

        try:
            return self.supervisor.check()
        except ChildFailed as exc:
            try:
                alert_raise(
                    key="stack:crash_loop",
                    message=str(exc).splitlines()[0],
                    severity=AlertSeverity.CRITICAL,
                    source="devtools.stack",
                )
            except Exception as alert_exc:  # noqa: BLE001 - stopping matters more
                self.out(f"supervisor: could not raise the alert: {alert_exc!r}")
            raise

    def _restarted(self, child: Child, code: int, restarts: int) -> None:
        from core.alerts import alert_raise
        from core.metrics import count_process_restart

        if child.name == "openbao":
            self._reseed_vault()
        count_process_restart(process=child.name)
        try:
            alert_raise(
                key=f"stack:restarted:{child.name}",
                message=(
                    f"{child.name} exited with {code} and was restarted ({restarts} restart(s) "
                    f"within {self.supervisor.policy.window:g} s); see {child.log_path}"
                ),
                source="devtools.stack",
                details={"process": child.name, "exit_code": code, "restarts": restarts},
            )
        except Exception as exc:  # noqa: BLE001 - the database may be what died
            self.out(f"supervisor: could not raise the alert for {child.name}: {exc!r}")

    # --- the sequence ----------------------------------------------------------------
    def up(self) -> StackInfo:
        ports = self._ports()
        self._prepare_state()
        anvil_url = f"http://127.0.0.1:{ports['anvil']}"
        self.env = self._child_env(ports)
        self._start_anvil(anvil_url)
        self._check_chain_matches_database(anvil_url)
        self._start_vault(ports["vault"])
        self._start_simulator(ports["opend"], ports["opend_control"])
        self._step("deploy contracts", [*MANAGE, "deploy_contracts"])
        self._create_admin()
        self._start_services(ports)
        return self.info

    def down(self) -> None:
        self.supervisor.stop_all()

    def exited(self) -> list[str]:
        return [
            f"{c.name} exited with {c.proc.returncode} (see {c.log_path})"
            for c in self.supervisor.exited()
        ]

    # --- ports and environment -------------------------------------------------------
    def _ports(self) -> dict[str, int]:
        c = self.config
        wanted = {
            "web": (c.web_port, "--web-port"),
            "flower": (c.flower_port, "--flower-port"),
            "anvil": (c.anvil_port, "--anvil-port"),
            "opend": (c.opend_port, "--opend-port"),
            "opend_control": (c.opend_control_port, "--opend-control-port"),
            "vault": (c.vault_port, "--vault-port"),
        }
        ports = {}
        for name, (port, flag) in wanted.items():
            try:
                ports[name] = free_port(port)
            except PortTaken as exc:
                raise StackError(
                    f"{exc} (needed for {name}); stop what holds it, or pass {flag} PORT "
                    "(0: any free port)"
                ) from exc
        return ports

    def _child_env(self, ports: dict[str, int]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "CHAIN_RPC_URL": f"http://127.0.0.1:{ports['anvil']}",
                "CHAIN_WS_URL": f"ws://127.0.0.1:{ports['anvil']}",
                "CHAIN_ANVIL_STATE_PATH": str(self.var / "chain" / "anvil-state.json"),
                "FUTU_OPEND_HOST": "127.0.0.1",
                "FUTU_OPEND_PORT": str(ports["opend"]),
                "OPEND_SIM_CONTROL": f"127.0.0.1:{ports['opend_control']}",
                # Futu allows 15 place-order requests per 30 s: the limiter (workers) and the
                # simulator keep the same window (Futu's own unless --rate-window says).
                "FUTU_RATE_WINDOW_SECONDS": f"{self.config.rate_window:g}",
                "ORDER_DEADLINE_SECONDS": str(self.config.deadline),
                "BRONCO_BROKER_OPENING_CASH": SIM_OPENING_CASH,
                "FLOWER_ADDRESS": "127.0.0.1",
                "FLOWER_PORT": str(ports["flower"]),
            }
        )
        return env

    # --- state -----------------------------------------------------------------------
    def _prepare_state(self) -> None:
        self._database(drop=self.config.fresh)
        call_command("check_services", verbosity=0)
        call_command("migrate", interactive=False, verbosity=0)
        from chain.models import ContractDeployment
        from orders.models import Order

        known = ContractDeployment.objects.filter(chain_id=settings.CHAIN_ID).exists()
        if self.config.fresh or not (known or Order.objects.exists()):
            for stale in ("chain", "opend"):
                shutil.rmtree(self.var / stale, ignore_errors=True)
            self._clear_redis()
            self.out("Fresh state: new chain, new broker account, empty queues.")
        for part in ("chain", "opend", "log", "openbao"):
            (self.var / part).mkdir(parents=True, exist_ok=True)

    def _database(self, *, drop: bool) -> None:
        """Drop the database with --fresh; `check_services`, run next, creates it."""
        if not drop:
            return
        if settings.BRONCO_ENV == "production":
            raise StackError("--fresh drops the database: refused with BRONCO_ENV=production")
        name = settings.DATABASES["default"]["NAME"]
        connections.close_all()
        try:
            conn = maintenance_connection()
        except psycopg2.Error:
            return  # check_services says what is wrong and how to fix it
        try:
            with conn.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                self.out(f"Dropped database {name} (--fresh).")
        finally:
            conn.close()

    def _clear_redis(self) -> None:
        """Queued tasks and rate-limit state of an earlier run name orders that are gone."""
        client = redis.Redis.from_url(settings.REDIS_URL)
        patterns = ("default", "chain", "broker", "unacked*", "_kombu.*", "celery-task-meta-*")
        for pattern in (*patterns, f"{settings.FUTU_RATE_KEY_PREFIX}:*", "bronco:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)

    def _check_chain_matches_database(self, rpc_url: str) -> None:
        from chain.models import ContractDeployment
        from orders.models import Order

        record = ContractDeployment.objects.filter(chain_id=settings.CHAIN_ID).first()
        orders = Order.objects.filter(chain_id=settings.CHAIN_ID).count()
        if record is None and not orders:
            return
        if record is not None and ChainClient(rpc_url).code_at(record.vault_address):
            return
        db = settings.DATABASES["default"]["NAME"]
        raise StackError(
            f"database {db} holds {orders} orders of a chain that is gone (no vault at "
            f"{record.vault_address if record else '-'}; was {self.var / 'chain'} removed?). "
            "Start over with `make run ARGS=--fresh` (drops and re-creates that database)."
        )

    # --- the parts -------------------------------------------------------------------
    def _start_anvil(self, rpc_url: str) -> None:
        child = self.supervisor.start("anvil", [*MANAGE, "anvil"], self.env, restart=True)
        self.supervisor.wait_ready(
            child,
            lambda: ChainClient(rpc_url, timeout=2).chain_id() == settings.CHAIN_ID,
            timeout=30,
            what="JSON-RPC answer",
        )
        self.info.anvil_url = rpc_url
        self.out(f"anvil      {rpc_url} (chain {settings.CHAIN_ID}, state in {self.var / 'chain'})")

    def _start_vault(self, port: int) -> None:
        bao = self.root / ".venv" / "bin" / "bao"
        if not bao.exists():
            bao = Path(shutil.which("bao") or bao)
        root_token = "root-" + secrets.token_hex(12)
        addr = f"http://127.0.0.1:{port}"
        child = self.supervisor.start(
            "openbao",
            [
                str(bao),
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-root-token-id={root_token}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            {"PATH": os.environ.get("PATH", ""), "HOME": str(self.var / "openbao")},
            restart=True,
        )
        self.supervisor.wait_ready(
            child,
            lambda: requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200,
            timeout=30,
            what="health answer",
        )
        self._vault_root_token = root_token
        self.info.vault_addr = addr
        self._write_vault_token(self._seed_vault(addr, root_token))
        self.env.pop("VAULT_TOKEN", None)
        self.env.update(
            {
                "VAULT_ADDR": addr,
                # Read again at every login: after an OpenBao restart (a dev server forgets
                # everything) the supervisor seeds it again and writes a new token here,
                # which running processes pick up on their next Forbidden.
                "VAULT_TOKEN_FILE": str(self._vault_token_path),
                "VAULT_KV_MOUNT": "secret",
                "VAULT_SECRET_PATH": "bronco",
                "VAULT_SECRET_FIELD": "value",
            }
        )
        self.out(f"OpenBao    {addr} (dev server; secrets {', '.join(SECRET_NAMES)})")

    @property
    def _vault_token_path(self) -> Path:
        return self.var / "openbao" / "token"

    def _write_vault_token(self, token: str) -> None:
        """Replace the token file atomically, readable by this user only."""
        path = self._vault_token_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        os.replace(tmp, path)

    def _reseed_vault(self) -> None:
        """After the supervisor restarted OpenBao (dev mode: empty again): seed it and hand
        the children a new read token through the token file."""
        addr = self.info.vault_addr
        child = self.supervisor.child("openbao")
        self.supervisor.wait_ready(
            child,
            lambda: requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200,
            timeout=30,
            what="health answer after restart",
        )
        self._write_vault_token(self._seed_vault(addr, self._vault_root_token))
        self.out("supervisor: OpenBao seeded again; new read token in the token file")

    def _seed_vault(self, addr: str, root_token: str) -> str:
        """KV v2 secrets at secret/bronco/<name>, and a read-only token for the children.
        The values are the ones this machine's settings hold (dev defaults unless set)."""
        root = hvac.Client(url=addr, token=root_token)
        if "secret/" not in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        values = {
            "futu_trade_password": settings.FUTU_TRADE_PASSWORD,
            "operator_private_key": settings.CHAIN_OPERATOR_PRIVATE_KEY,
        }
        for name, value in values.items():
            root.secrets.kv.v2.create_or_update_secret(
                path=f"bronco/{name}", secret={"value": value}, mount_point="secret"
            )
        root.sys.create_or_update_policy(
            name=_VAULT_POLICY,
            policy='path "secret/data/bronco/*" { capabilities = ["read"] }',
        )
        token = root.auth.token.create(policies=[_VAULT_POLICY], ttl="24h")["auth"]
        reader = hvac.Client(url=addr, token=token["client_token"])
        for name, value in values.items():
            got = reader.secrets.kv.v2.read_secret_version(
                path=f"bronco/{name}", mount_point="secret", raise_on_deleted_version=True
            )["data"]["data"]["value"]
            if got != value:
                raise StackError(f"OpenBao did not give back secret {name}")
        return token["client_token"]

    def _start_simulator(self, port: int, control_port: int) -> None:
        from trading.opend_sim.server import SimulatorControl

        child = self.supervisor.start(
            "opend-sim",
            [
                *MANAGE,
                "opend_sim",
                "--port",
                str(port),
                "--control-port",
                str(control_port),
                "--state-file",
                str(self.var / "opend" / "state.json"),
                "--rate-window",
                f"{self.config.rate_window:g}",
                "--trade-password",
                settings.FUTU_TRADE_PASSWORD,
            ],
            self.env,
            restart=True,
        )
        control = SimulatorControl("127.0.0.1", control_port, timeout=2)
        try:
            pong = self.supervisor.wait_ready(
                child, control.ping, timeout=30, what="control-port answer"
            )
        finally:
            control.close()
        self.info.opend = f"127.0.0.1:{port}"
        self.info.opend_control = f"127.0.0.1:{control_port}"
        self.out(
            f"OpenD sim  127.0.0.1:{port} (control {control_port}, account {pong['acc_id']}, "
            f"rate window {self.config.rate_window:g} s)"
        )

    def _step(self, name: str, argv: list[str], timeout: float = 180) -> None:
        """Run a one-off child to completion (its output in var/log/<name>.log)."""
        child = self.supervisor.start(name.replace(" ", "-"), argv, self.env)
        try:
            child.proc.wait(timeout=timeout)
        finally:
            self.supervisor.children.remove(child)
        if child.proc.returncode != 0:
            raise ChildFailed(
                f"{name} failed ({child.proc.returncode}); see {child.log_path}:\n"
                f"{child.log_tail()}"
            )
        self.info.contracts = child.log_path.read_text().splitlines()
        for line in self.info.contracts:
            self.out(f"           {line.strip()}")

    def _create_admin(self) -> None:
        from django.contrib.auth import get_user_model

        user_model = get_user_model()
        password = secrets.token_urlsafe(12)
        user, _ = user_model.objects.get_or_create(
            username=self.config.admin_user, defaults={"email": "admin@localhost"}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.info.admin_user, self.info.admin_password = user.username, password

    def _start_services(self, ports: dict[str, int]) -> None:
        host = socket.gethostname()
        web_url = f"http://127.0.0.1:{ports['web']}"
        web = self.supervisor.start(
            "web",
            [*MANAGE, "runserver", f"127.0.0.1:{ports['web']}", "--noreload"],
            self.env,
            restart=True,
        )
        workers = []
        for queue, concurrency in WORKERS:
            workers.append(f"{queue}@{host}")
            self.supervisor.start(
                f"worker-{queue}",
                [
                    *CELERY,
                    "worker",
                    "-Q",
                    queue,
                    "-c",
                    str(concurrency),
                    "-n",
                    f"{queue}@%h",
                    "--loglevel",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                ],
                self.env,
                restart=True,
            )
        beat = self.supervisor.start(
            "beat",
            [*CELERY, "beat", "--loglevel", "INFO", "-s", str(self.var / "celerybeat-schedule")],
            self.env,
            restart=True,
        )
        listener = self.supervisor.start(
            "listener", [*MANAGE, "listen_chain"], self.env, restart=True
        )
        auth = settings.FLOWER_BASIC_AUTH
        if not auth:
            auth = f"flower:{secrets.token_urlsafe(12)}"
            self.info.flower_auth_generated = True
        flower = self.supervisor.start(
            "flower", [*CELERY, "flower"], {**self.env, "FLOWER_BASIC_AUTH": auth}, restart=True
        )
        flower_url = f"http://127.0.0.1:{ports['flower']}"
        user, _, password = auth.partition(",")[0].partition(":")

        self.supervisor.wait_ready(
            web,
            lambda: requests.get(f"{web_url}/health", timeout=2).status_code == 200,
            timeout=60,
            what="/health answer",
        )
        from bronco_project.celery import app

        def all_workers() -> bool:
            replies = app.control.ping(timeout=1.0)
            seen = {name for reply in replies for name in reply}
            return set(workers) <= seen

        first_worker = next(c for c in self.supervisor.children if c.name.startswith("worker"))
        self.supervisor.wait_ready(first_worker, all_workers, timeout=90, what="worker pings")
        self.supervisor.wait_ready(
            listener,
            lambda: "listening to" in listener.log_path.read_text(),
            timeout=60,
            what="listener start",
        )
        self.supervisor.wait_ready(
            beat,
            lambda: "beat: Starting" in beat.log_path.read_text(),
            timeout=60,
            what="beat start",
        )
        self.supervisor.wait_ready(
            flower,
            lambda: (
                requests.get(
                    f"{flower_url}/healthcheck", auth=(user, password), timeout=2
                ).status_code
                == 200
            ),
            timeout=60,
            what="/healthcheck answer",
        )
        self.info.web_url, self.info.flower_url, self.info.flower_auth = web_url, flower_url, auth
        for name in ("web", *(f"worker-{q}" for q, _ in WORKERS), "beat", "listener", "flower"):
            self.out(f"{name:<10} up (log {self.var / 'log' / (name + '.log')})")


def rpc_port(url: str, default: int) -> int:
    return urlparse(url).port or default
