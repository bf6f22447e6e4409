"""Fixtures of the trading tests beyond the shared ones in tests/fixtures."""

from tests.fakes.broker import fake_broker  # noqa: F401  (the in-memory broker fixture)
