import random

from shared.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_cap_and_reset() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    ceilings = [1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        assert 0 <= b.next_delay() <= ceiling
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() <= 1.0


def test_full_jitter_spreads_a_fleet() -> None:
    delays = {round(Backoff(base=1.0, cap=30.0, attempt=5).next_delay(), 3) for _ in range(50)}
    assert len(delays) > 40
