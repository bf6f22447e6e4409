"""Shared fixtures. Each real part is started once per session on a free port by the
fixture modules below."""

pytest_plugins = ["tests.fixtures.chain", "tests.fixtures.broker", "tests.fixtures.vault"]
