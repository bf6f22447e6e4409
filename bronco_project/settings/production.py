"""Production: refuses to start on a development default, and says which one."""

from django.core.exceptions import ImproperlyConfigured

from bronco_project.settings.base import *  # noqa: F403
from bronco_project.settings.base import (
    DATABASE_URL,
    DEBUG,
    DEV_DATABASE_URL,
    DEV_SECRET_KEY,
    SECRET_KEY,
    VAULT_ADDR,
    VAULT_ROLE_ID,
    VAULT_SECRET_ID,
    VAULT_SECRET_ID_FILE,
    VAULT_TOKEN,
    VAULT_TOKEN_FILE,
)
from bronco_project.settings.chain import (
    CHAIN_SETTLEMENT_SENDER,
    CHAIN_SETTLEMENT_SENDER_REAL,
)
from bronco_project.settings.checks import production_problems
from bronco_project.settings.trading import (
    DEFAULT_TRADING_BROKER_FACTORY,
    TRADING_BROKER_FACTORY,
)

_problems = production_problems(
    debug=DEBUG,
    secret_key=SECRET_KEY,
    dev_secret_key=DEV_SECRET_KEY,
    database_url=DATABASE_URL,
    dev_database_url=DEV_DATABASE_URL,
    vault_addr=VAULT_ADDR,
    vault_token=VAULT_TOKEN or VAULT_TOKEN_FILE,
    vault_role_id=VAULT_ROLE_ID,
    vault_secret_id=VAULT_SECRET_ID or VAULT_SECRET_ID_FILE,
)
if TRADING_BROKER_FACTORY != DEFAULT_TRADING_BROKER_FACTORY:
    _problems.append(
        f"TRADING_BROKER_FACTORY is {TRADING_BROKER_FACTORY!r}; production trades only "
        f"through the Futu adapter ({DEFAULT_TRADING_BROKER_FACTORY}): unset "
        "TRADING_BROKER_FACTORY"
    )
if CHAIN_SETTLEMENT_SENDER != CHAIN_SETTLEMENT_SENDER_REAL:
    _problems.append(
        f"CHAIN_SETTLEMENT_SENDER is {CHAIN_SETTLEMENT_SENDER!r}: production settles only "
        f"through {CHAIN_SETTLEMENT_SENDER_REAL!r} (another sender is for tests)"
    )
if _problems:
    raise ImproperlyConfigured("BRONCO_ENV=production refuses to start: " + "; ".join(_problems))

SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
