"""The scenario plan and the report's arithmetic: pure functions, no real parts."""

from decimal import Decimal

import pytest

from core.money import USDT_UNIT
from devtools.report import percentile, table
from devtools.scenario import Deposit, Redeem, scenario_plan, user_key
from ops.reconciliation import parse_amounts


def _plan(**overrides):
    args = {"users": 20, "deposits": 200, "redeems": 50, "cancels": 10, "seed": 1} | overrides
    return scenario_plan(**args)


def test_the_plan_is_deterministic_and_has_what_was_asked():
    plan = _plan()
    assert plan == _plan()
    assert (plan.deposits, plan.redeems, plan.cancels) == (200, 50, 10)
    assert _plan(seed=2) != plan
    assert plan.keys[3] == user_key(1, 3) != user_key(2, 3)


def test_cancels_go_where_there_is_time_to_cancel_and_redeems_follow_a_fill(settings):
    plan = _plan()
    code = settings.BRONCO_SYMBOLS
    for actions in plan.users:
        first = actions[0]
        assert isinstance(first, Deposit) and code[first.symbol] == "US.AAPL"
        assert not first.cancel and first.usdt_units >= 500 * USDT_UNIT
        for action in actions:
            if isinstance(action, Deposit) and action.cancel:
                assert code[action.symbol] in ("US.NVDA", "US.TSLA")
    assert all(not isinstance(u[0], Redeem) for u in plan.users)


def test_the_demo_mix_has_refusals_and_the_fills_mix_has_none(settings):
    demo = [a for u in _plan().users for a in u if isinstance(a, Deposit)]
    assert any(d.usdt_units < 1 * USDT_UNIT for d in demo)  # below the minimum
    assert any(settings.BRONCO_SYMBOLS[d.symbol] == "HK.00700" for d in demo)
    fills = [a for u in _plan(mix="fills", redeems=0).users for a in u if isinstance(a, Deposit)]
    assert all(d.usdt_units >= 300 * USDT_UNIT for d in fills)  # a share or more
    assert {settings.BRONCO_SYMBOLS[d.symbol] for d in fills} <= {"US.AAPL", "US.NVDA", "US.TSLA"}


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50,
        99,
        100,
    )
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0


def test_parse_amounts_and_table():
    assert parse_amounts("USD=10000000, HKD=50000000.5") == {
        "USD": Decimal("10000000"),
        "HKD": Decimal("50000000.5"),
    }
    with pytest.raises(ValueError):
        parse_amounts("USD")
    assert table(["a", "n"], [["x", 1]]).splitlines()[2] == "  x  1"
