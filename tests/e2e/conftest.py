"""The whole system for end-to-end tests: anvil with the contracts, an OpenD simulator with a
short rate window, and real Bronco processes (Celery worker, beat, the listener) started as
subprocesses against this test run's database and Redis."""

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fixtures.broker import SimHandle, clear_rate_limits, simulator_running
from tests.fixtures.processes import (
    bronco_process,
    celery_worker_argv,
    subprocess_env,
    wait_until,
)

RATE_WINDOW = 2.0  # seconds; Futu's 15 places per 30 s shrunk to per 2 s, same both sides


@dataclass
class Stack:
    contracts: Any
    sim: SimHandle
    env: dict[str, str]
    exits: ExitStack
    processes: dict[str, Any] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], **env: str) -> Any:
        proc = self.exits.enter_context(bronco_process(name, argv, {**self.env, **env}))
        self.processes[name] = proc
        return proc

    def start_worker(self, name: str = "worker", *, concurrency: int = 2) -> Any:
        return self.start(name, celery_worker_argv(concurrency=concurrency))

    def start_listener(self) -> Any:
        return self.start(
            "listener", [sys.executable, "manage.py", "listen_chain", "--poll-interval", "0.2"]
        )

    def start_beat(self) -> Any:
        return self.start(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bronco_project",
                "beat",
                "--loglevel",
                "INFO",
                "-s",
                "/dev/null",
            ],
        )


@pytest.fixture(scope="module")
def e2e_sim() -> Iterator[SimHandle]:
    with simulator_running(rate_window=RATE_WINDOW) as handle:
        yield handle


@pytest.fixture
def stack(settings, chain_settings, anvil, e2e_sim) -> Iterator[Stack]:
    e2e_sim.sim.reset()
    clear_rate_limits(e2e_sim.acc_id)
    settings.FUTU_OPEND_HOST = e2e_sim.host
    settings.FUTU_OPEND_PORT = e2e_sim.port
    settings.FUTU_ACC_ID = e2e_sim.acc_id
    settings.FUTU_RATE_WINDOW_SECONDS = RATE_WINDOW
    settings.ORDER_POLL_INTERVAL_SECONDS = 0.5
    settings.ORDER_SETTLE_CHECK_SECONDS = 0.3
    settings.ORDER_RETRY_SECONDS = 0.5
    settings.ORDER_RUN_LEASE_SECONDS = 5
    settings.CHAIN_START_BLOCK = anvil.client().block_number() + 1
    settings.COMPENSATION_SCAN_SECONDS = 2  # beat syncs its schedule from the settings
    settings.NETTING_CYCLE_TIMEOUT_SECONDS = 3
    settings.NETTING_CYCLE_LEASE_SECONDS = 5
    from trading.session import reset_broker

    reset_broker()
    # The stack's Redis is known from here on: the first compensation scan must not take the
    # test run's fresh database (flushed at the session's start) for a broker that lost its
    # queues (that gives every open order ORDER_FAULT_DEADLINE_GRACE_SECONDS).
    from orders.runs import broker_lost_work

    broker_lost_work()
    env = subprocess_env(**e2e_sim.env, FUTU_RATE_WINDOW_SECONDS=RATE_WINDOW)
    with ExitStack() as exits:
        stack = Stack(contracts=chain_settings, sim=e2e_sim, env=env, exits=exits)
        yield stack
    reset_broker()


__all__ = ["Stack", "wait_until"]
