"""No secret reaches any log output while the pipeline runs with its secrets from Vault.

The operator's private key and the Futu trade password live only in the OpenBao dev server
(the settings that could otherwise supply them are emptied) and are read through
`core.secrets.get_secret`. The broker runs in the REAL environment of an OpenD
simulator whose trade password is the one in Vault, so an order is placed only if that
password was read and used; settlement is signed with the key from Vault, so the deposit
settles only if the key was read and used.

Everything logged is captured at DEBUG, from every logger: the root logger (caplog, after
the handlers' redacting filter ran), a handler on each logger that does not propagate (the
futu SDK's own), what reached stdout/stderr (capfd), and the futu SDK's log file. No output
may contain a secret value, the key without its 0x prefix, in any letter case; nor may any
attribute of a record (what a structured formatter would print).
"""

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from chain.client import address_of_key
from chain.models import SettlementTx
from core import secrets as secrets_module
from core.models import AuditLog
from core.money import USDT_UNIT
from orders.models import OrderStatus
from tests.fixtures.broker import clear_rate_limits, start_simulator
from tests.fixtures.chain import OPERATOR_KEY
from tests.fixtures.pipeline import chain_deposit, drive, fast_pipeline

pytestmark = [
    pytest.mark.vault,
    pytest.mark.chain,
    pytest.mark.broker,
    pytest.mark.django_db(transaction=True),
]


# --- Capturing every log output ---------------------------------------------------------
class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@dataclass
class Captured:
    """All log output of a block, as text, plus the records themselves."""

    texts: dict[str, str] = field(default_factory=dict)
    records: list[logging.LogRecord] = field(default_factory=list)

    def leaks(self, forbidden: dict[str, list[str]]) -> list[str]:
        found = []
        for channel, text in self.texts.items():
            low = text.lower()
            for name, forms in forbidden.items():
                found += [f"{name} in {channel}" for form in forms if form.lower() in low]
        for record in self.records:
            attrs = " ".join(f"{k}={v!r}" for k, v in vars(record).items()).lower()
            for name, forms in forbidden.items():
                found += [
                    f"{name} in a {record.name} record's attributes"
                    for form in forms
                    if form.lower() in attrs
                ]
        return sorted(set(found))


def _futu_log_files() -> dict[Path, int]:
    folder = Path.home() / ".com.futunn.FutuOpenD" / "Log"
    return {p: p.stat().st_size for p in folder.glob("*.log")} if folder.exists() else {}


@contextmanager
def everything_logged(caplog, capfd) -> Iterator[Captured]:
    """Every logger at DEBUG for the block (levels restored after); collect its output."""
    from futu.common.ft_logger import logger as futu_logger

    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    levels = {lg: lg.level for lg in loggers}
    futu_levels = (futu_logger.console_level, futu_logger.file_level)
    isolated = _Keep()
    isolated_on = [lg for lg in loggers if not lg.propagate]
    futu_files = _futu_log_files()
    captured = Captured()
    capfd.readouterr()  # start from here
    caplog.clear()
    try:
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
        for lg in isolated_on:
            lg.addHandler(isolated)
        futu_logger.console_level = logging.DEBUG
        futu_logger.file_level = logging.DEBUG
        with caplog.at_level(logging.DEBUG):
            yield captured
    finally:
        futu_logger.console_level, futu_logger.file_level = futu_levels
        for lg in isolated_on:
            lg.removeHandler(isolated)
        for lg, level in levels.items():
            lg.setLevel(level)
        out, err = capfd.readouterr()
        captured.texts = {
            "root logger (caplog)": caplog.text,
            "non-propagating loggers": "\n".join(isolated.lines),
            "stdout": out,
            "stderr": err,
        }
        for path in _futu_log_files():
            with path.open("rb") as fh:
                fh.seek(futu_files.get(path, 0))
                captured.texts[f"futu log file {path.name}"] = fh.read().decode(errors="replace")
        captured.records = list(caplog.records) + isolated.records


# --- The stack with its secrets in Vault ------------------------------------------------
@pytest.fixture
def vault_secrets(vault_settings, settings) -> Iterator[dict[str, str]]:
    """Both secrets only in Vault: the settings fallbacks are emptied. The key is the
    operator the test vault contract was deployed with; the trade password is fresh."""
    previous = dict(vault_settings.secrets)
    values = {
        "operator_private_key": OPERATOR_KEY,
        "futu_trade_password": "tp-" + secrets.token_urlsafe(18),
    }
    for name, value in values.items():
        vault_settings.write_secret(name, value)
    settings.CHAIN_OPERATOR_PRIVATE_KEY = ""
    settings.FUTU_TRADE_PASSWORD = ""
    secrets_module.clear_secret_cache()
    yield values
    for name, value in previous.items():
        vault_settings.write_secret(name, value)
    secrets_module.clear_secret_cache()


@pytest.fixture
def real_broker(vault_secrets, settings) -> Iterator:
    """An OpenD simulator whose REAL account unlocks only with the password in Vault, and
    the broker settings pointed at that account."""
    from trading.session import reset_broker

    sim = start_simulator(trade_password=vault_secrets["futu_trade_password"])
    try:
        clear_rate_limits(sim.real_acc_id, "REAL")
        sim.set_security(code="US.AAPL", price="100.00", fill_mode="full", lot_size=1)
        settings.FUTU_OPEND_HOST = sim.host
        settings.FUTU_OPEND_PORT = sim.port
        settings.FUTU_ACC_ID = sim.real_acc_id
        settings.FUTU_TRD_ENV = "REAL"
        reset_broker()
        yield sim
    finally:
        reset_broker()
        sim.control.close()
        sim.sim.stop()


def test_pipeline_run_with_vault_secrets_logs_neither_secret(
    settings, chain_settings, vault_secrets, vault_settings, real_broker, chain_user, caplog, capfd
):
    settings.CHAIN_OPERATOR_PRIVATE_KEY = ""  # chain_settings set it: Vault is the only source
    fast_pipeline(settings)
    key, password = vault_secrets["operator_private_key"], vault_secrets["futu_trade_password"]
    forbidden = {
        "operator private key": [key, key.removeprefix("0x")],
        "futu trade password": [password],
        "vault token": [vault_settings.reader_token],
    }
    user = chain_user(2)
    read = mock.Mock(wraps=secrets_module._read_vault)

    with (
        mock.patch.object(secrets_module, "_read_vault", read),
        everything_logged(caplog, capfd) as captured,
    ):
        order = chain_deposit(user, chain_settings, "AAPL", 1_000 * USDT_UNIT)
        drive(order.pk)
        logging.getLogger("tests.canary").debug("pipeline run done for order %s", order.pk)

    # The run really used both secrets from Vault ...
    assert {c.args[0] for c in read.call_args_list} == {
        "operator_private_key",
        "futu_trade_password",
    }
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED, order.last_error
    # Placed in REAL: trading unlocked with the Vault password.
    cycle = order.allocations.get().cycle
    (placed,) = real_broker.orders(remark=cycle.client_id)
    assert placed["acc_id"] == real_broker.real_acc_id
    assert real_broker.sim.market.unlocked
    settlement = SettlementTx.objects.get(order_id=order.pk)
    assert settlement.sender.lower() == address_of_key(key).lower()  # signed with it
    assert AuditLog.objects.filter(order=order, action="order.settled").exists()

    # ... the capture saw the whole run at DEBUG ...
    assert "pipeline run done for order" in captured.texts["root logger (caplog)"]
    assert f"cycle {cycle.pk} of AAPL" in captured.texts["root logger (caplog)"]
    assert any(r.levelno == logging.DEBUG and r.name != "tests.canary" for r in captured.records)

    # ... and no secret appears in any of it.
    assert captured.leaks(forbidden) == []


def test_the_capture_would_see_a_leak_in_every_channel(caplog, capfd):
    """The check above is not vacuous: a value logged anywhere (root logger, a logger that
    does not propagate, a record attribute, stdout) is found."""
    canary = "canary-" + secrets.token_hex(8)
    isolated = logging.getLogger("tests.isolated")
    isolated.propagate = False
    try:
        with everything_logged(caplog, capfd) as captured:
            logging.getLogger("tests.canary").debug("debug line with %s", canary.upper())
            isolated.debug("isolated %s", canary)
            logging.getLogger("tests.canary").info("structured", extra={"value": canary})
            print(canary)  # noqa: T201
    finally:
        isolated.propagate = True
    leaks = captured.leaks({"canary": [canary]})
    assert "canary in root logger (caplog)" in leaks
    assert "canary in non-propagating loggers" in leaks
    assert "canary in stdout" in leaks
    assert "canary in a tests.canary record's attributes" in leaks
