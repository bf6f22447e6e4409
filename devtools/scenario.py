"""The scenario driver: on-chain users depositing, cancelling and redeeming, against a
running Bronco (listener, workers, beat) and broker.

`scenario_plan` turns (users, deposits, redeems, cancels, seed) into a deterministic plan;
`ScenarioDriver` funds the users on a dev chain, scripts the OpenD simulator (when there is
one) so that each symbol behaves in its own way, sends every transaction as a real signed
transaction from the user's own key, and waits until every order it caused is terminal.
It only talks to the system the way users and an operator's test rig would: the chain,
the simulator's control port, and reads of the database.

How the symbols behave under the simulator script:
- AAPL fills in full at once;
- NVDA fills in full after a few seconds (room for a cancel to win);
- TSLA fills in full after 1 s;
- TCEHY (HK.00700, lots of 100, ~4,900 USDT a lot) fills in full at once: deposits far below
  one lot buy fractions, the house inventory holding the rest of each lot.
Netting prices every symbol's book once per cycle and crosses redeems against deposits. Some
deposits are below the minimum: refused and refunded.

After the main plan, `session_cases` (with a simulator) shows sessions and user terms: an
AAPL deposit made while the simulator's clock says Saturday waits for the market and fills
after Monday's open; a limit deposit below the market waits for the price and fills when it
comes down; one whose bound the market never reaches expires and is refunded.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.db.models.functions import Lower
from eth_utils import keccak

from chain import events as vault_events
from chain import selectors as chain_selectors
from chain.client import (
    ChainClient,
    Receipt,
    address_of_key,
    chain_client,
    symbol_to_bytes32,
)
from chain.deployment import contract_set
from chain.exceptions import ChainError
from core.money import TOKEN_UNIT, USDT_UNIT
from orders.models import TERMINAL_STATUSES, Order, OrderStatus, OrderType, Waiting
from trading.pricing import fx_rate

logger = logging.getLogger(__name__)

# Futu code -> how the simulator is scripted for it, and what that shows.
SIM_SCRIPT: dict[str, tuple[dict[str, Any], str]] = {
    "US.AAPL": ({"fill_mode": "full", "fill_delay": 0.0}, "fills in full at once"),
    "US.NVDA": ({"fill_mode": "full", "fill_delay": 3.0}, "fills in full after 3 s"),
    "US.TSLA": ({"fill_mode": "full", "fill_delay": 1.0}, "fills in full after 1 s"),
    "HK.00700": (
        {"fill_mode": "full", "fill_delay": 0.0, "lot_size": 100},
        "fills in full at once (lots of 100: small deposits buy fractions)",
    ),
}
# Benchmarks: every US symbol fills in full at once, so latency is Bronco's, not a script's.
FILLS_SCRIPT: dict[str, tuple[dict[str, Any], str]] = {
    code: ({"fill_mode": "full", "fill_delay": 0.0}, "fills in full at once")
    for code in ("US.AAPL", "US.NVDA", "US.TSLA")
}
# Benchmarks of netting: all four symbols fill at once, the HK one in lots of 100.
NETTING_SCRIPT: dict[str, tuple[dict[str, Any], str]] = {
    **FILLS_SCRIPT,
    "HK.00700": (
        {"fill_mode": "full", "fill_delay": 0.0, "lot_size": 100},
        "fills in full at once (lots of 100: small deposits buy fractions)",
    ),
}
MIXES = {"demo": SIM_SCRIPT, "fills": FILLS_SCRIPT, "netting": NETTING_SCRIPT}
_SYMBOL_WEIGHTS = {"AAPL": 35, "NVDA": 25, "TSLA": 25, "TCEHY": 15}
_FILLABLE = ("US.AAPL", "US.NVDA", "US.TSLA")
_CANCELLABLE = ("US.NVDA", "US.TSLA")
ETH_FUNDING_WEI = 1_000 * 10**18
# The simulator's clock for the closed-market case: a Saturday, then Monday's US open.
SATURDAY = "2026-12-05T17:00:00+00:00"
MONDAY_US_OPEN = "2026-12-07T14:30:00+00:00"
SESSION_CASE_USDT = 100 * USDT_UNIT
EXPIRY_CASE_SECONDS = 20
REDEEM_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class Deposit:
    symbol: str
    usdt_units: int
    cancel: bool = False


@dataclass(frozen=True)
class Redeem:
    """Redeem a random whole number of shares of a symbol the user holds; with `half`,
    half a share less, so the broker sells one lot fewer and the remainder comes back."""

    half: bool = False


Action = Deposit | Redeem


@dataclass(frozen=True)
class ScenarioPlan:
    seed: int
    users: list[list[Action]]
    keys: list[str]

    @property
    def deposits(self) -> int:
        return sum(isinstance(a, Deposit) for u in self.users for a in u)

    @property
    def redeems(self) -> int:
        return sum(isinstance(a, Redeem) for u in self.users for a in u)

    @property
    def cancels(self) -> int:
        return sum(isinstance(a, Deposit) and a.cancel for u in self.users for a in u)

    def usdt_needed(self, user: int) -> int:
        return sum(a.usdt_units for a in self.users[user] if isinstance(a, Deposit))


def user_key(seed: int, index: int) -> str:
    """A deterministic private key per (seed, user): the same users on every run."""
    return "0x" + keccak(text=f"bronco-scenario-user:{seed}:{index}").hex()


def _amount(rng: random.Random, code: str, *, refusals: bool = True) -> int:
    roll = rng.random() if refusals else 1.0
    if code.startswith("HK."):
        # One lot of HK.00700 is ~38,000 HKD (~4,900 USDT): every deposit is a fraction of it.
        usdt = rng.uniform(50, 2_000)
    elif roll < 0.03:
        usdt = 0.5  # below ORDER_MIN_USDT: refused before the book
    elif roll < 0.07:
        usdt = rng.uniform(20, 90)  # less than one share: buys a fraction
    else:
        usdt = rng.uniform(100 if refusals else 300, 2_500)
    return int(Decimal(str(round(usdt, 2))) * USDT_UNIT)


def scenario_plan(
    *, users: int, deposits: int, redeems: int, cancels: int, seed: int, mix: str = "demo"
) -> ScenarioPlan:
    """A deterministic plan. Cancels go to deposits of symbols that leave time to cancel;
    each user's redeems come after at least one of its deposits on a fillable symbol.
    `mix="fills"` (benchmarks): only US symbols that fill at once, no refusals;
    `mix="netting"`: every symbol fills at once (the HK one in lots of 100), no refusals."""
    if users < 1:
        raise ValueError("at least one user")
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {sorted(MIXES)}")
    rng = random.Random(seed)
    code = settings.BRONCO_SYMBOLS
    symbols = [s for s in code if s in _SYMBOL_WEIGHTS] or list(code)
    if mix == "fills":
        symbols = [s for s in symbols if code[s] in _FILLABLE] or symbols
    weights = [_SYMBOL_WEIGHTS.get(s, 10) for s in symbols]
    fillable = [s for s in symbols if code[s] in _FILLABLE] or symbols

    # Each user's first deposit buys shares at once, so it has something to redeem.
    at_once = [s for s in fillable if code[s] == "US.AAPL"] or fillable
    planned: list[list[Deposit]] = [[] for _ in range(users)]
    for i in range(deposits):
        if i < users and redeems:
            symbol = rng.choice(at_once)
            amount = int(Decimal(str(round(rng.uniform(500, 2_500), 2))) * USDT_UNIT)
        else:
            symbol = rng.choices(symbols, weights)[0]
            amount = _amount(rng, code[symbol], refusals=mix == "demo")
        planned[i % users].append(Deposit(symbol, amount))
    cancellable = [
        (u, j)
        for u, user_deposits in enumerate(planned)
        for j, d in enumerate(user_deposits)
        if code[d.symbol] in _CANCELLABLE and j > 0
    ]
    for u, j in rng.sample(cancellable, min(cancels, len(cancellable))):
        d = planned[u][j]
        planned[u][j] = Deposit(d.symbol, d.usdt_units, cancel=True)

    plans: list[list[Action]] = [list(d) for d in planned]
    for i in range(redeems):
        actions = plans[i % users]
        first = next(
            (k for k, a in enumerate(actions) if isinstance(a, Deposit) and a.symbol in fillable),
            None,
        )
        if first is None:
            continue
        # Late in the user's run, when it holds more than its first symbol.
        at = rng.randint(max(first + 1, len(actions) * 2 // 3), len(actions))
        actions.insert(at, Redeem(half=rng.random() < 0.2))
    return ScenarioPlan(seed=seed, users=plans, keys=[user_key(seed, i) for i in range(users)])


# --- sending ------------------------------------------------------------------------------


@dataclass
class Sent:
    """One user transaction the driver sent."""

    kind: str  # deposit | redeem | cancel
    user: str
    symbol: str
    amount: int
    tx_hash: str
    onchain_id: int
    sent_at: float  # time.time() when its receipt came back (the log exists from then on)


@dataclass
class DriverState:
    sent: list[Sent] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = 0.0
    sending_done_at: float = 0.0

    def record(self, sent: Sent) -> None:
        with self.lock:
            self.sent.append(sent)

    def order_keys(self) -> list[tuple[str, int]]:
        with self.lock:
            return [
                (OrderType.BUY if s.kind == "deposit" else OrderType.SELL, s.onchain_id)
                for s in self.sent
                if s.kind in ("deposit", "redeem")
            ]


class _Pacer:
    """Offered rate: the k-th deposit goes out no earlier than start + k / rate."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + 1.0 / self.rate
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class ScenarioDriver:
    def __init__(
        self,
        plan: ScenarioPlan,
        *,
        rate: float = 0.0,
        sim_control: Any = None,
        mix: str = "demo",
        out: Callable[[str], None] = print,
    ) -> None:
        self.plan = plan
        self.rate = rate
        self.sim = sim_control
        self.script = MIXES[mix]
        self.out = out
        self.contracts = contract_set()
        self.state = DriverState()
        self.addresses = [address_of_key(k) for k in plan.keys]
        self._lower_addresses = [a.lower() for a in self.addresses]
        self._tokens: dict[str, str] | None = None
        self.usdt = chain_selectors.usdt_address()

    # --- preparing ---------------------------------------------------------------------
    def script_simulator(self) -> list[str]:
        """Tell the simulator how each listed symbol behaves; returns what it was told."""
        lines = []
        if self.sim is None:
            return ["no simulator control port: the broker behaves as it does"]
        for market in ("US", "HK"):
            self.sim.set_market_open(market=market, is_open=True)
        for symbol, code in sorted(settings.BRONCO_SYMBOLS.items()):
            script = self.script.get(code)
            if script is None:
                continue
            changes, meaning = script
            self.sim.set_security(code=code, **changes)
            lines.append(f"{symbol:<6} {code:<9} {meaning}")
        return lines

    def fund_users(self) -> None:
        """Dev chains only: gas money (anvil_setBalance) and mock USDT (minted by the
        deployer, who owns MockUSDT), then one max approval of the vault per user."""
        client = chain_client()
        if client.chain_id() not in settings.CHAIN_DEV_CHAIN_IDS:
            raise ChainError("the scenario funds its users with mock USDT: dev chains only")
        usdt = self.usdt
        for i, address in enumerate(self.addresses):
            client.rpc("anvil_setBalance", [address, hex(ETH_FUNDING_WEI)])
            need = self.plan.usdt_needed(i) + 10 * USDT_UNIT
            have = int(client.call("MockUSDT", usdt, "balanceOf", address))
            if have < need:
                client.transact(
                    private_key=settings.CHAIN_DEPLOYER_PRIVATE_KEY,
                    contract="MockUSDT",
                    address=usdt,
                    fn="mint",
                    args=(address, need - have),
                )
        threads = [
            threading.Thread(target=self._approve, args=(key,), daemon=True)
            for key in self.plan.keys
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _approve(self, key: str) -> None:
        client = chain_client()
        owner = address_of_key(key)
        allowance = int(
            client.call("MockUSDT", self.usdt, "allowance", owner, self.contracts.vault)
        )
        if allowance < 2**255:
            client.transact(
                private_key=key,
                contract="MockUSDT",
                address=self.usdt,
                fn="approve",
                args=(self.contracts.vault, 2**256 - 1),
            )

    # --- running -----------------------------------------------------------------------
    def send_all(self) -> DriverState:
        """Every user acts in its own thread; deposits are paced at the offered rate."""
        pacer = _Pacer(self.rate)
        self.state.started_at = time.time()
        threads = [
            threading.Thread(target=self._run_user, args=(i, pacer), name=f"user-{i}", daemon=True)
            for i in range(len(self.plan.users))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.state.sending_done_at = time.time()
        return self.state

    def _run_user(self, index: int, pacer: _Pacer) -> None:
        key = self.plan.keys[index]
        rng = random.Random(f"{self.plan.seed}:{index}")
        for action in self.plan.users[index]:
            try:
                if isinstance(action, Deposit):
                    pacer.wait()
                    self._deposit(key, action)
                else:
                    self._redeem(key, action, rng)
            except ChainError as exc:
                with self.state.lock:
                    self.state.errors.append(f"user {index}: {action}: {exc}")

    def _transact(self, key: str, fn: str, *args: Any) -> Receipt:
        return chain_client().transact(
            private_key=key, contract="BroncoVault", address=self.contracts.vault, fn=fn, args=args
        )

    def _event_in(
        self, receipt: Receipt, event_type: type[vault_events.EventT]
    ) -> vault_events.EventT:
        try:
            return chain_client().receipt_event(
                receipt, address=self.contracts.vault, event_type=event_type
            )
        except LookupError as exc:
            raise ChainError(str(exc)) from None

    def _deposit(self, key: str, action: Deposit) -> None:
        receipt = self._transact(
            key, "deposit", symbol_to_bytes32(action.symbol), action.usdt_units
        )
        mined_at = time.time()
        deposit_id = self._event_in(receipt, vault_events.Deposit).deposit_id
        user = address_of_key(key)
        self.state.record(
            Sent(
                "deposit",
                user,
                action.symbol,
                action.usdt_units,
                receipt.tx_hash,
                deposit_id,
                mined_at,
            )
        )
        if action.cancel:
            receipt = self._transact(key, "requestCancel", deposit_id)
            self.state.record(
                Sent("cancel", user, action.symbol, 0, receipt.tx_hash, deposit_id, time.time())
            )

    def _holdings(self, client: ChainClient, user: str) -> dict[str, int]:
        if self._tokens is None:
            self._tokens = {
                symbol: token
                for symbol, code in settings.BRONCO_SYMBOLS.items()
                if code in _FILLABLE and (token := chain_selectors.token_address(symbol=symbol))
            }
        return {
            symbol: int(client.call("StockToken", token, "balanceOf", user))
            for symbol, token in self._tokens.items()
        }

    def _redeem(self, key: str, action: Redeem, rng: random.Random) -> None:
        client = chain_client()
        user = address_of_key(key)
        deadline = time.monotonic() + REDEEM_WAIT_SECONDS
        while True:
            held = {s: units for s, units in self._holdings(client, user).items() if units}
            whole = {s: u for s, u in held.items() if u >= TOKEN_UNIT}
            if whole:
                break
            if time.monotonic() > deadline:
                with self.state.lock:
                    self.state.skipped.append(f"redeem by {user}: no shares after 120 s")
                return
            time.sleep(0.5)
        symbol = rng.choice(sorted(whole))
        shares = rng.randint(1, whole[symbol] // TOKEN_UNIT)
        units = shares * TOKEN_UNIT - (TOKEN_UNIT // 2 if action.half else 0)
        receipt = self._transact(key, "redeem", symbol_to_bytes32(symbol), units)
        mined_at = time.time()
        redeem_id = self._event_in(receipt, vault_events.Redeem).redeem_id
        self.state.record(Sent("redeem", user, symbol, units, receipt.tx_hash, redeem_id, mined_at))

    # --- sessions and user terms --------------------------------------------------------
    def session_cases(self, *, timeout: float = 180.0) -> list[str]:
        """Three AAPL deposits of the first user, one after the other (the simulator's
        clock and AAPL's price are scripted, then put back): closed market, then open;
        a limit below the market, then the price comes down; a limit never reached, expiring
        after EXPIRY_CASE_SECONDS. Returns what happened, one line each."""
        if self.sim is None:
            return ["no simulator control port: session cases skipped"]
        key, code = self.plan.keys[0], settings.BRONCO_SYMBOLS["AAPL"]
        client = chain_client()
        client.transact(
            private_key=settings.CHAIN_DEPLOYER_PRIVATE_KEY,
            contract="MockUSDT",
            address=self.usdt,
            fn="mint",
            args=(address_of_key(key), 3 * SESSION_CASE_USDT),
        )
        price = Decimal(self.sim.set_security(code=code)["price"])
        per_share_units = int(price / fx_rate(code) * USDT_UNIT)
        lines = []

        self.sim.set_clock(at=SATURDAY, rate=0)
        try:
            order = self._wait_order(self._deposit_with_terms(key, 0, 0), Waiting.MARKET, timeout)
            lines.append(f"closed market: deposit {order.pk} waits for the market (Saturday)")
        finally:
            self.sim.set_clock(at=MONDAY_US_OPEN, rate=0)
        order = self._wait_order(order.onchain_id, None, timeout)
        self.sim.set_clock(at=None)
        lines.append(f"  after Monday's open: {order.status}, {order.tokens_minted} token units")

        bound = per_share_units * 98 // 100
        order = self._wait_order(self._deposit_with_terms(key, bound, 0), Waiting.PRICE, timeout)
        lines.append(f"limit {bound} USDT units/share: deposit {order.pk} waits for the price")
        self.sim.set_security(code=code, price=str((price * Decimal("0.97")).quantize(price)))
        try:
            order = self._wait_order(order.onchain_id, None, timeout)
        finally:
            self.sim.set_security(code=code, price=str(price))
        lines.append(f"  after the price came down: {order.status}, avg {order.avg_fill_price}")

        expiry = int(time.time()) + EXPIRY_CASE_SECONDS
        deposit_id = self._deposit_with_terms(key, per_share_units // 2, expiry)
        order = self._wait_order(deposit_id, None, timeout + EXPIRY_CASE_SECONDS)
        lines.append(
            f"limit never reached, expiry {EXPIRY_CASE_SECONDS} s: deposit {order.pk} "
            f"{order.status}, {order.refund_usdt} USDT units refunded ({order.last_error})"
        )
        return lines

    def _deposit_with_terms(self, key: str, bound_units: int, expiry: int) -> int:
        receipt = self._transact(
            key,
            "deposit",
            symbol_to_bytes32("AAPL"),
            SESSION_CASE_USDT,
            bound_units,
            expiry,
        )
        deposit_id = self._event_in(receipt, vault_events.Deposit).deposit_id
        self.state.record(
            Sent(
                "deposit",
                address_of_key(key),
                "AAPL",
                SESSION_CASE_USDT,
                receipt.tx_hash,
                deposit_id,
                time.time(),
            )
        )
        return deposit_id

    def _wait_order(self, deposit_id: int, waiting: str | None, timeout: float) -> Order:
        """The deposit's order once it waits for `waiting` (None: once it is terminal)."""
        deadline = time.monotonic() + timeout
        while True:
            order = Order.objects.filter(
                chain_id=settings.CHAIN_ID, order_type=OrderType.BUY, onchain_id=deposit_id
            ).first()
            if order is not None and (
                order.waiting_for == waiting
                if waiting is not None
                else order.status in TERMINAL_STATUSES
            ):
                return order
            if time.monotonic() > deadline:
                raise ChainError(f"deposit {deposit_id}: not {waiting or 'terminal'} in time")
            time.sleep(0.5)

    # --- waiting -----------------------------------------------------------------------
    def orders(self) -> list[Order]:
        keys = self.state.order_keys()
        by_type: dict[str, list[int]] = {OrderType.BUY: [], OrderType.SELL: []}
        for order_type, onchain_id in keys:
            by_type[order_type].append(onchain_id)
        found: list[Order] = []
        for order_type, ids in by_type.items():
            if ids:
                found += list(
                    Order.objects.filter(
                        chain_id=settings.CHAIN_ID, order_type=order_type, onchain_id__in=ids
                    )
                )
        return found

    def status_counts(self) -> dict[str, int]:
        """Orders of this run by status: one aggregate query over the users' orders created
        since sending began (vault ids are hashes, not a counter; the users are the same on
        every run, so a kept database holds their earlier orders). Polled every half second,
        it neither loads the orders nor sends their ids: on a 10,000-order run doing either
        slowed the sender threads sharing this process to a third of the offered rate."""
        counts = dict.fromkeys(OrderStatus.values, 0)
        if not self.state.started_at:
            return counts
        since = datetime.fromtimestamp(self.state.started_at, tz=UTC)
        rows = (
            Order.objects.annotate(address=Lower("user_address"))
            .filter(
                chain_id=settings.CHAIN_ID,
                address__in=self._lower_addresses,
                created_at__gte=since,
            )
            .values("status")
            .annotate(n=Count("pk"))
        )
        for row in rows:
            counts[row["status"]] = row["n"]
        return counts

    def finished(self, counts: dict[str, int] | None = None) -> bool:
        """Every order this run sent is terminal (`counts`: a `status_counts()` to reuse)."""
        counts = self.status_counts() if counts is None else counts
        expected = len(self.state.order_keys())
        terminal = sum(counts[s] for s in TERMINAL_STATUSES)
        return terminal >= expected and terminal == sum(counts.values())
