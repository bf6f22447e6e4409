"""Broker settings (OpenD host, account, rate limits, slippage). Owned by the trading app."""
