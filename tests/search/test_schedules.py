"""Temperature schedules: the built-in ones, and the registry (unknown names, duplicates, your own)."""

from __future__ import annotations

import pytest

from dais_search.errors import UserError
from dais_search.search import schedules
from dais_search.search.schedules import get_schedule, list_schedules, register_schedule, temperature_at


def test_temperature_schedules():
    assert temperature_at(0, 1.0, 0.01) == pytest.approx(1.0) and temperature_at(1, 1.0, 0.01) == pytest.approx(0.01)
    assert temperature_at(0.5, 1.0, 0.01) == pytest.approx(0.1)
    assert temperature_at(0.5, 1.0, 0.0, "cosine") == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["exponential", "cosine"])
def test_schedules_start_and_end_where_asked_and_clamp_progress(name):
    assert temperature_at(0, 2.0, 0.05, name) == pytest.approx(2.0)
    assert temperature_at(1, 2.0, 0.05, name) == pytest.approx(0.05)
    assert temperature_at(-0.5, 2.0, 0.05, name) == pytest.approx(2.0)
    assert temperature_at(1.5, 2.0, 0.05, name) == pytest.approx(0.05)
    middle = temperature_at(0.5, 2.0, 0.05, name)
    assert 0.05 < middle < 2.0
    assert temperature_at(0.25, 2.0, 0.05, name) > middle > temperature_at(0.75, 2.0, 0.05, name)


def test_unknown_schedule_is_a_user_error_listing_the_registered_ones():
    assert {"cosine", "exponential"} <= set(list_schedules())
    with pytest.raises(UserError) as caught:
        temperature_at(0.5, 1.0, 0.01, "linear")
    assert "'linear'" in str(caught.value)
    assert all(name in str(caught.value) for name in list_schedules())
    with pytest.raises(UserError, match="'Cosine'"):  # names are case-sensitive
        get_schedule("Cosine")


def test_registering_a_taken_name_is_refused():
    built_in = get_schedule("cosine")
    with pytest.raises(ValueError, match="'cosine' is already registered") as caught:
        register_schedule("cosine")(lambda p, start, end: start)
    assert not isinstance(caught.value, UserError)  # a programming error, not a user's
    assert get_schedule("cosine") is built_in


def test_a_registered_schedule_is_used_by_temperature_at():
    def linear(p, start, end):
        return start + (end - start) * p

    try:
        assert register_schedule("test-linear")(linear) is linear
        assert "test-linear" in list_schedules()
        assert temperature_at(0.25, 1.0, 0.0, "test-linear") == pytest.approx(0.75)
        assert temperature_at(2.0, 1.0, 0.0, "test-linear") == pytest.approx(0.0)  # progress is clamped for it too
    finally:
        schedules.SCHEDULES.unregister("test-linear")
    assert "test-linear" not in list_schedules()
