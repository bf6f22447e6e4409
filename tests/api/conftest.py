"""The public API's tests: each test gets its own rate-limit and quote-cache keys in the test
Redis, so no count or cached price leaks from one test to the next."""

import uuid

# py_ecc (under web3) raises the recursion limit when first imported; importing it here, before
# any hypothesis test runs, keeps hypothesis from warning that the limit moved under it.
import py_ecc  # noqa: F401
import pytest

from tests.browser.conftest import browser, page  # noqa: F401  (the status page's browser test)


@pytest.fixture(autouse=True)
def own_api_keys(settings):
    tag = uuid.uuid4().hex
    settings.API_RATE_LIMIT_KEY_PREFIX = f"test:api-rate:{tag}"
    settings.API_QUOTE_KEY_PREFIX = f"test:api-quote:{tag}"
    return tag
