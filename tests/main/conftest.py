"""A running Bronco on a chain of its own: reconciliation reads whole-chain totals (token
supplies, the vault's USDT), so these tests never share a node with other tests.

`main_stack` starts a fresh anvil with the contracts, an OpenD simulator with a 2 s rate
window, a Celery worker and the listener (real subprocesses, the test database and Redis);
`run_small_scenario(stack)` drives a few users through it with the scenario driver and
waits until every order is terminal.
"""

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from tests.fixtures.broker import SimHandle, clear_rate_limits, simulator_running
from tests.fixtures.chain import AnvilNode, deploy_contract_set, point_settings_at
from tests.fixtures.processes import (
    bronco_process,
    celery_worker_argv,
    subprocess_env,
    wait_until,
)

RATE_WINDOW = 2.0
DEADLINE = 12
OPENING_CASH = {"USD": Decimal("10000000"), "HKD": Decimal("50000000")}


@dataclass
class MainStack:
    node: AnvilNode
    contracts: Any
    sim: SimHandle
    env: dict[str, str]
    processes: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def main_sim() -> Iterator[SimHandle]:
    with simulator_running(rate_window=RATE_WINDOW) as handle:
        yield handle


@pytest.fixture
def main_stack(settings, anvil_factory, main_sim) -> Iterator[MainStack]:
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    point_settings_at(settings, node, contracts)
    main_sim.sim.reset()
    clear_rate_limits(main_sim.acc_id)
    settings.FUTU_OPEND_HOST = main_sim.host
    settings.FUTU_OPEND_PORT = main_sim.port
    settings.FUTU_ACC_ID = main_sim.acc_id
    settings.FUTU_RATE_WINDOW_SECONDS = RATE_WINDOW
    settings.ORDER_DEADLINE_SECONDS = DEADLINE
    settings.ORDER_POLL_INTERVAL_SECONDS = 0.5
    settings.ORDER_SETTLE_CHECK_SECONDS = 0.3
    settings.ORDER_RETRY_SECONDS = 0.5
    settings.ORDER_RUN_LEASE_SECONDS = 5
    from trading.session import reset_broker

    reset_broker()
    env = subprocess_env(**main_sim.env, FUTU_RATE_WINDOW_SECONDS=RATE_WINDOW)
    stack = MainStack(node=node, contracts=contracts, sim=main_sim, env=env)
    with ExitStack() as exits:
        for name, argv in (
            ("main-worker", celery_worker_argv(concurrency=2)),
            (
                "main-listener",
                [sys.executable, "manage.py", "listen_chain", "--poll-interval", "0.2"],
            ),
        ):
            stack.processes[name] = exits.enter_context(bronco_process(name, argv, env))
        yield stack
    reset_broker()


def run_small_scenario(stack: MainStack, **plan: int):
    """Drive a small seeded scenario to the end; returns the driver."""
    from devtools.scenario import ScenarioDriver, scenario_plan

    args = {"users": 2, "deposits": 6, "redeems": 2, "cancels": 1, "seed": 7} | plan
    driver = ScenarioDriver(scenario_plan(**args), sim_control=stack.sim.control)
    driver.script_simulator()
    driver.fund_users()
    driver.send_all()
    assert not driver.state.errors, driver.state.errors
    wait_until(driver.finished, timeout=120, interval=0.5, what="every scenario order to settle")
    return driver
