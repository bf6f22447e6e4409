"""Place slots (orders.netting.slots) on the real Redis: cycles of all symbols take turns
at Futu's place budget, evenly spaced, never more than the budget in any window."""

import redis
from django.conf import settings

from orders.netting.slots import SLOT_KEY, place_slot_reserve, place_slot_spacing


def test_spacing_keeps_fifteen_places_inside_a_thirty_second_window(settings):
    settings.FUTU_RATE_WINDOW_SECONDS = 30.0
    settings.FUTU_RATE_WINDOW_MARGIN_SECONDS = 0.25
    settings.FUTU_RATE_LIMITS = {**settings.FUTU_RATE_LIMITS, "place": (15, 0.02)}
    spacing = place_slot_spacing()
    assert 2.0 < spacing < 2.05
    # The 16th slot is a full window (with margin) after the first.
    assert 15 * spacing >= 30.25


def test_slots_go_out_in_turn_one_spacing_apart():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(SLOT_KEY)
    spacing = place_slot_spacing()
    waits = [place_slot_reserve(client) for _ in range(4)]
    assert waits[0] == 0.0
    for k in (1, 2, 3):
        # Reserved within milliseconds of each other: k spacings ahead, less the time since.
        assert k * spacing - 0.5 < waits[k] <= k * spacing + 1e-6
    assert client.pttl(SLOT_KEY) > 0  # the key expires when idle


def test_an_idle_scheduler_gives_the_next_slot_at_once():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(SLOT_KEY)
    past = int((client.time()[0] - 60) * 1_000_000)
    client.set(SLOT_KEY, past)
    assert place_slot_reserve(client) == 0.0
