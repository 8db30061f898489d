"""Retry delays (tideflow.core.retry)."""

from __future__ import annotations

import random

import pytest

from tideflow.core.retry import retry_delay
from tideflow.errors import InvalidOptionError


def delay(
    retry_count: int,
    interval: float = 1.0,
    backoff: str = "exponential",
    max_interval: float = 3600.0,
    jitter: bool = False,
    seed: int = 0,
) -> float:
    return retry_delay(retry_count, interval, backoff, max_interval, jitter, random.Random(seed))


@pytest.mark.parametrize("jitter", [False, True])
def test_fixed_backoff_is_the_interval_and_never_jittered(jitter: bool) -> None:
    rng = random.Random(7)
    state = rng.getstate()
    assert [retry_delay(n, 5, "fixed", 2, jitter, rng) for n in (1, 2, 10, 5000)] == [5.0] * 4
    assert rng.getstate() == state


def test_exponential_doubles_from_the_interval_and_is_capped() -> None:
    assert [delay(n, max_interval=10) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    assert [delay(n, interval=2.5) for n in range(1, 5)] == [2.5, 5, 10, 20]


def test_exponential_jitter_stays_within_bounds() -> None:
    for seed in range(200):
        for n in range(1, 8):
            cap = min(2 ** (n - 1), 10)
            assert 0 <= delay(n, max_interval=10, jitter=True, seed=seed) <= cap


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    first = [delay(n, interval=3, jitter=True, seed=42) for n in range(1, 10)]
    again = [delay(n, interval=3, jitter=True, seed=42) for n in range(1, 10)]
    other = [delay(n, interval=3, jitter=True, seed=43) for n in range(1, 10)]
    assert first == again
    assert first != other
    assert first != [delay(n, interval=3) for n in range(1, 10)]


def test_large_retry_counts_do_not_overflow() -> None:
    assert delay(5000) == 3600
    assert delay(10**30, interval=0.001, max_interval=60) == 60
    assert 0 <= delay(5000, jitter=True) <= 3600
    assert delay(5000, interval=0) == 0


def test_delay_is_never_negative() -> None:
    assert delay(3, interval=-5) == 0
    assert delay(3, interval=-5, backoff="fixed") == 0
    assert delay(3, max_interval=-1) == 0
    assert delay(3, max_interval=-1, jitter=True) == 0
    assert delay(0) == 1
    assert delay(-3) == 1


def test_result_is_a_float() -> None:
    assert isinstance(retry_delay(2, 1, "exponential", 3, False, random.Random()), float)
    assert isinstance(retry_delay(9, 1, "exponential", 3, False, random.Random()), float)
    assert isinstance(retry_delay(1, 1, "fixed", 3, False, random.Random()), float)


def test_unknown_backoff_is_an_option_error() -> None:
    with pytest.raises(InvalidOptionError, match='"fixed" or "exponential"'):
        delay(1, backoff="linear")
