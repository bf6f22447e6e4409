"""Property tests of `orders.netting.bounds.breaks_bound` against the vault's own checks
(BroncoVault `_checkDepositTerms` / `_checkRedeemTerms`, written here from the contract's
integer expressions): a participant the cycle keeps at a price is never refused by the vault
for its bound, whatever its share of the cycle, and one it prices out would be."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from orders.models import Order, OrderType
from orders.netting.allocation import TOKEN_UNITS_PER_SHARE, Pricing, _ceil, _floor
from orders.netting.bounds import breaks_bound, priced_out

SHARE = TOKEN_UNITS_PER_SHARE

prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("5000"), places=3)
fx = st.sampled_from([Decimal(1), Decimal("7.80"), Decimal("7.8123")])
bounds_units = st.integers(min_value=1, max_value=5_000 * 10**6)
tokens = st.integers(min_value=1, max_value=10_000 * SHARE)


def _vault_accepts_deposit(cost: int, minted: int, bound: int) -> bool:
    return not (cost * SHARE > minted * bound + SHARE - 1)


def _vault_accepts_redeem(gross: int, sold: int, bound: int) -> bool:
    return not (gross < (sold * bound) // SHARE)


@given(price=prices, rate=fx, bound=bounds_units, units=tokens)
def test_a_kept_buyer_or_seller_passes_the_vaults_bound_check(price, rate, bound, units):
    pricing = Pricing(price, rate)
    value = pricing.value(units)
    buyer = Order(order_type=OrderType.BUY, price_bound=bound)
    seller = Order(order_type=OrderType.SELL, price_bound=bound)
    if not breaks_bound(buyer, price=price, ccy_per_usdt=rate):
        assert _vault_accepts_deposit(_ceil(value), units, bound)
    if not breaks_bound(seller, price=price, ccy_per_usdt=rate):
        assert _vault_accepts_redeem(_floor(value), units, bound)


@given(price=prices, rate=fx, bound=bounds_units)
def test_a_priced_out_participant_would_be_refused_for_some_share(price, rate, bound):
    """Priced out means the price breaks the bound per share: at 10^6 shares (large enough
    for the rounding to the USDT base unit not to hide it) the vault refuses it."""
    pricing = Pricing(price, rate)
    units = 10**6 * SHARE
    value = pricing.value(units)
    buyer = Order(order_type=OrderType.BUY, price_bound=bound)
    seller = Order(order_type=OrderType.SELL, price_bound=bound)
    if breaks_bound(buyer, price=price, ccy_per_usdt=rate):
        assert not _vault_accepts_deposit(_ceil(value), units, bound)
    if breaks_bound(seller, price=price, ccy_per_usdt=rate):
        assert not _vault_accepts_redeem(_floor(value), units, bound)


def test_no_bound_is_never_priced_out():
    orders = [Order(order_type=t, price_bound=0) for t in (OrderType.BUY, OrderType.SELL)]
    assert priced_out(orders, price=Decimal("1e6"), ccy_per_usdt=Decimal(1)) == (orders, [])
    assert priced_out(orders, price=Decimal("0.0001"), ccy_per_usdt=Decimal(1)) == (orders, [])
