"""The OpenD simulator itself, through the raw SDK where it matters: fill pushes, rate-limit
answers, restart from a state file, random walk, scripting from another process, the
management command, and a forked child building its own session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from futu import (
    RET_OK,
    OpenSecTradeContext,
    TradeDealHandlerBase,
    TrdEnv,
    TrdMarket,
    TrdSide,
)

from tests.fixtures.broker import clear_rate_limits, start_simulator
from trading.futu import FutuBroker
from trading.opend_sim.market import SimSecurity
from trading.opend_sim.server import SimulatorControl

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


def test_fill_pushes_reach_a_raw_sdk_deal_handler(opend):
    deals: list[dict] = []
    got = threading.Event()

    class Deals(TradeDealHandlerBase):
        def on_recv_rsp(self, rsp_pb):  # type: ignore[no-untyped-def]
            ret, data = super().on_recv_rsp(rsp_pb)
            if ret == RET_OK:
                deals.extend(data.to_dict("records"))
                got.set()
            return ret, data

    ctx = OpenSecTradeContext(filter_trdmarket=TrdMarket.US, host=opend.host, port=opend.port)
    try:
        ctx.set_handler(Deals())
        ret, data = ctx.place_order(
            price=191.0,
            qty=2,
            code="US.AAPL",
            trd_side=TrdSide.BUY,
            trd_env=TrdEnv.SIMULATE,
            acc_id=opend.acc_id,
            remark="raw-sdk",
        )
        assert ret == RET_OK, data
        assert got.wait(5)
        ret, fills = ctx.deal_list_query(trd_env=TrdEnv.SIMULATE, acc_id=opend.acc_id)
        assert ret == RET_OK and len(fills) == 1
    finally:
        ctx.close()
    assert deals[0]["code"] == "US.AAPL" and deals[0]["qty"] == 2.0
    assert deals[0]["order_id"] == str(data["order_id"][0])


def test_rate_limit_is_answered_with_futus_error(opend):
    ctx = OpenSecTradeContext(filter_trdmarket=TrdMarket.US, host=opend.host, port=opend.port)
    try:
        answers = []
        for _ in range(12):
            ret, data = ctx.order_list_query(
                trd_env=TrdEnv.SIMULATE, acc_id=opend.acc_id, refresh_cache=True
            )
            answers.append((ret, data if ret != RET_OK else None))
        # Cached reads are not limited, as at Futu.
        ret, _ = ctx.order_list_query(trd_env=TrdEnv.SIMULATE, acc_id=opend.acc_id)
        assert ret == RET_OK
    finally:
        ctx.close()
    refused = [msg for ret, msg in answers if ret != RET_OK]
    assert len(refused) == 2
    assert "frequency" in refused[0] and "10 order_list requests per 30" in refused[0]


def test_state_file_survives_a_restart(tmp_path):
    state = tmp_path / "opend.json"
    clear_rate_limits(123456789)
    first = start_simulator(state_file=state, acc_id=123456789)
    broker = FutuBroker(
        host=first.host, port=first.port, acc_id=first.acc_id, trade_password="123456"
    )
    try:
        first.control.set_security(code="US.TSLA", fill_mode="none")
        resting = broker.place_order(
            client_id="keep-1",
            code="US.TSLA",
            side="BUY",
            qty=Decimal(2),
            limit_price=Decimal("251"),
        )
        broker.place_order(
            client_id="keep-2",
            code="US.AAPL",
            side="BUY",
            qty=Decimal(3),
            limit_price=Decimal("191"),
        )
        cash = broker.funds().cash
    finally:
        first.control.close()
        first.sim.stop()
    second = start_simulator(state_file=state, acc_id=123456789)
    broker.port = second.port
    try:
        again = broker.place_order(
            client_id="keep-1",
            code="US.TSLA",
            side="BUY",
            qty=Decimal(2),
            limit_price=Decimal("251"),
        )
        assert again.broker_order_id == resting.broker_order_id  # found by remark
        assert broker.funds().cash == cash
        assert {p.code: p.qty for p in broker.positions()} == {"US.AAPL": Decimal(3)}
        second.control.fill(order_id=resting.broker_order_id)
        assert broker.query_order(client_id="keep-1").filled_qty == 2
        assert len(second.control.orders()) == 2
    finally:
        broker.close()
        second.control.close()
        second.sim.stop()


def test_random_walk_moves_prices_on_tick():
    handle = start_simulator(
        securities=[
            SimSecurity(code="HK.00700", price=Decimal("380"), lot_size=100, walk=Decimal("0.01"))
        ],
        walk_interval=0.01,
        seed=7,
    )
    try:
        seen = set()
        for _ in range(20):
            time.sleep(0.03)
            seen.add(Decimal(handle.control.set_security(code="HK.00700")["price"]))
    finally:
        handle.control.close()
        handle.sim.stop()
    assert len(seen) > 3
    assert all(p % Decimal("0.2") == 0 for p in seen if 200 < p <= 500)


def test_scripted_from_another_process(opend):
    code = (
        "import sys; from trading.opend_sim.server import SimulatorControl;"
        "c = SimulatorControl(sys.argv[1], int(sys.argv[2]));"
        "c.set_price(code='US.AAPL', price='201.5'); print(c.ping()['acc_id'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, opend.host, str(opend.control_port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(out.stdout.strip()) == opend.acc_id
    assert opend.sim.market.securities["US.AAPL"].price == Decimal("201.5")


def test_management_command_serves_the_sdk():
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "opend_sim", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "bronco_project.settings.test"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on ([\d.]+):(\d+) \(control port (\d+)", line)
        assert match, line
        host, port, control = match.group(1), int(match.group(2)), int(match.group(3))
        broker = FutuBroker(host=host, port=port, trade_password="123456")
        try:
            assert broker.quote("US.AAPL").price > 0
        finally:
            broker.close()
        assert SimulatorControl(host, control).ping()["port"] == port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_builds_its_own_session(broker_settings):
    from trading.session import get_broker

    parent = get_broker()
    parent.connect()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, as a Celery prefork worker
        code = 1
        try:
            child = get_broker()
            ok = child is not parent and child.quote("US.AAPL").price > 0
            code = 0 if ok else 2
        finally:
            os.write(write, str(code).encode())
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 8) == b"0"
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.quote("US.AAPL").price > 0  # the parent's session is untouched
