"""Market data from OpenD: a security's snapshot and its market's state, as a `Quote`."""

from __future__ import annotations

from trading.broker import Quote
from trading.exceptions import BrokerRejected, NoQuote
from trading.futu.connection import FutuConnection
from trading.futu.parsing import quote_from_snapshot, to_decimal
from trading.pricing import currency_of, market_of


class FutuMarketData(FutuConnection):
    """The `QuoteSource` half of the adapter."""

    def quote(self, code: str) -> Quote:
        """Snapshot (rate limited: 60 per 30 s) plus the global market state (not limited).
        Raises NoQuote for an unknown code or a security without a last price."""
        self._limit("snapshot")
        try:
            snap = self._call(lambda q, t: q.get_market_snapshot([code]), kind="snapshot")
        except BrokerRejected as exc:
            raise NoQuote(f"no quote for {code}: {exc}") from exc
        if snap is None or len(snap) == 0:
            raise NoQuote(f"no quote for {code}")
        row = snap.iloc[0].to_dict()
        if to_decimal(row.get("last_price")) <= 0:
            raise NoQuote(f"{code} has no last price")
        return quote_from_snapshot(
            row,
            code=code,
            currency=currency_of(code),
            market_state=self._market_state(code),
            fill_outside_rth=self.fill_outside_rth,
        )

    def _market_state(self, code: str) -> str:
        """Futu's name for the state of `code`'s market (e.g. "AFTERNOON", "CLOSED")."""
        state = self._call(lambda q, t: q.get_global_state())
        return str(state.get(f"market_{market_of(code).lower()}", ""))
