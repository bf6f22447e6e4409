"""The one place that converts between human amounts and on-chain integer base units.

USDT has 6 decimals on chain; stock tokens have 18, so an allocation of a fractional share
is still an exact integer. Nothing here ever touches float.
"""

from decimal import ROUND_DOWN, ROUND_UP, Decimal

from django.db import models

USDT_DECIMALS = 6
TOKEN_DECIMALS = 18
USDT_UNIT = 10**USDT_DECIMALS
TOKEN_UNIT = 10**TOKEN_DECIMALS
UINT256_MAX = 2**256 - 1


def usdt_to_units(amount: Decimal) -> int:
    """USDT -> base units, rounding down (we never promise a unit we do not hold)."""
    if isinstance(amount, float):
        raise TypeError("money is never a float")
    return int((Decimal(amount) * USDT_UNIT).to_integral_value(rounding=ROUND_DOWN))


def units_to_usdt(units: int) -> Decimal:
    return Decimal(int(units)) / USDT_UNIT


def shares_to_token_units(shares: Decimal) -> int:
    """Shares -> token base units (18 decimals), rounding down."""
    if isinstance(shares, float):
        raise TypeError("share quantities are never a float")
    return int((Decimal(shares) * TOKEN_UNIT).to_integral_value(rounding=ROUND_DOWN))


def token_units_to_shares(units: int) -> Decimal:
    return Decimal(int(units)) / TOKEN_UNIT


class UintField(models.DecimalField):
    """An unsigned on-chain integer (up to uint256), stored as NUMERIC(78, 0) and read as int.

    A database CHECK keeps it non-negative (see each model's constraints).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["max_digits"] = 78
        kwargs["decimal_places"] = 0
        super().__init__(*args, **kwargs)

    def deconstruct(self):  # type: ignore[no-untyped-def]
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("max_digits", None)
        kwargs.pop("decimal_places", None)
        return name, path, args, kwargs

    def from_db_value(self, value, expression, connection):  # type: ignore[no-untyped-def]
        return None if value is None else int(value)

    def to_python(self, value):  # type: ignore[no-untyped-def]
        if value is None or isinstance(value, int):
            return value
        return int(super().to_python(value))

    def get_db_prep_value(self, value, connection, prepared=False):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        return Decimal(int(value))


def market_to_usdt_units_up(amount: Decimal, *, ccy_per_usdt: Decimal) -> int:
    """Market-currency amount -> USDT base units, rounding up: what we charge a user."""
    return int((Decimal(amount) * USDT_UNIT / ccy_per_usdt).to_integral_value(rounding=ROUND_UP))


def market_to_usdt_units_down(amount: Decimal, *, ccy_per_usdt: Decimal) -> int:
    """Market-currency amount -> USDT base units, rounding down: what we pay a user."""
    return int((Decimal(amount) * USDT_UNIT / ccy_per_usdt).to_integral_value(rounding=ROUND_DOWN))
