"""Market data from OpenD: snapshots and each security's own market state, as `Quote`s.

One snapshot request carries up to 400 codes (`get_market_snapshot`,
https://openapi.futunn.com/futu-api-doc/en/quote/get-market-snapshot.html, 60 per 30 s)
and one `get_market_state` request the same codes
(https://openapi.futunn.com/futu-api-doc/en/quote/get-market-state.html): market state is
per security, not per market. The tick is the snapshot's own `price_spread`.
"""

from __future__ import annotations

from trading.broker import Quote
from trading.exceptions import BrokerRejected, NoQuote
from trading.futu.connection import FutuConnection
from trading.futu.parsing import quote_from_snapshot, to_decimal
from trading.pricing import currency_of

SNAPSHOT_MAX_CODES = 400


class FutuMarketData(FutuConnection):
    """The `QuoteSource` half of the adapter."""

    def quote(self, code: str) -> Quote:
        """One code's quote (one snapshot request). Raises NoQuote for an unknown code or a
        security without a last price."""
        quotes = self.quotes([code])
        if code not in quotes:
            raise NoQuote(f"no quote for {code}")
        return quotes[code]

    def quotes(self, codes: list[str]) -> dict[str, Quote]:
        """Quotes for many codes: one snapshot and one market-state request per 400 codes.
        Codes without a price are left out. Raises NoQuote when OpenD refuses the batch
        (an unknown code in it)."""
        result: dict[str, Quote] = {}
        unique = list(dict.fromkeys(codes))
        for start in range(0, len(unique), SNAPSHOT_MAX_CODES):
            batch = unique[start : start + SNAPSHOT_MAX_CODES]
            self._limit("snapshot")
            try:
                snap = self._call(
                    lambda q, t, batch=batch: q.get_market_snapshot(batch), kind="snapshot"
                )
                states = self._market_states(batch)
            except BrokerRejected as exc:
                raise NoQuote(f"no quote for {', '.join(batch)}: {exc}") from exc
            for row in snap.to_dict("records") if snap is not None else []:
                code = str(row.get("code"))
                if to_decimal(row.get("last_price")) <= 0:
                    continue
                result[code] = quote_from_snapshot(
                    row,
                    code=code,
                    currency=currency_of(code),
                    market_state=states.get(code, ""),
                    sessions=self.sessions_of(code),
                )
        return result

    def _market_states(self, codes: list[str]) -> dict[str, str]:
        """Futu's market state of each security (e.g. "AFTERNOON", "CLOSED")."""
        data = self._call(lambda q, t: q.get_market_state(codes))
        return {str(r["code"]): str(r.get("market_state") or "") for r in data.to_dict("records")}
