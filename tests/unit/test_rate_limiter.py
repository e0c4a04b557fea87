"""The rate limiter on its own: Reverb's formulas in Rewind's units, the deadlock refusals, and the edges."""

from __future__ import annotations

import math
import re

import pytest

from rewind.errors import InvalidArgument
from rewind_buffer.rate_limiter import INSERT, SAMPLE, LimiterSettings, LimiterState, RateLimiter
from rewind_buffer.settings import BufferSettings, parse_error_buffer


def ratio(spi: float = 2.0, min_size: int = 10, error_buffer: float | tuple[float, float] = 50.0,
          inserts_wait: bool = True) -> LimiterSettings:
    return LimiterSettings.sample_to_insert_ratio(spi, min_size, error_buffer, inserts_wait)


def test_a_scalar_error_buffer_is_a_window_around_the_ratio_after_min_size():
    s = ratio(spi=2.0, min_size=10, error_buffer=50.0)
    assert (s.min_diff, s.max_diff) == (2.0 * 10 - 50.0, 2.0 * 10 + 50.0)
    pair = ratio(error_buffer=(-5.0, 80.0))
    assert (pair.min_diff, pair.max_diff) == (-5.0, 80.0)  # a pair is the window itself, no offset


def test_samples_wait_for_min_size_then_for_the_ratio():
    limiter = RateLimiter(ratio(spi=2.0, min_size=10, error_buffer=50.0))  # window [-30, 70]
    assert not limiter.can_sample(size=9, count=1)  # stage 1: below min size, no sample
    limiter.inserted(10)
    assert limiter.error() == 20.0
    assert limiter.can_sample(size=10, count=50)  # 20 - 50 = -30 >= -30
    assert not limiter.can_sample(size=10, count=51)  # 20 - 51 = -31 < -30
    limiter.sampled(50)
    assert limiter.error() == -30.0 and not limiter.can_sample(size=10, count=1)
    limiter.inserted(1)  # one transition buys samples_per_insert = 2 sequences
    assert limiter.can_sample(size=11, count=2) and not limiter.can_sample(size=11, count=3)


def test_inserts_are_free_until_min_size_then_bounded_by_max_diff():
    limiter = RateLimiter(ratio(spi=2.0, min_size=10, error_buffer=50.0))  # window [-30, 70]
    assert limiter.can_insert(size=0, count=10)  # reaches min size exactly: free
    limiter.inserted(10)
    assert limiter.can_insert(size=10, count=25)  # (10 + 25) x 2 - 0 = 70 <= 70
    assert not limiter.can_insert(size=10, count=26)  # 72 > 70
    limiter.sampled(4)
    assert limiter.can_insert(size=10, count=27)  # (10 + 27) x 2 - 4 = 70


def test_a_min_size_limiter_only_waits_for_the_size():
    limiter = RateLimiter(LimiterSettings.min_size(100))
    assert limiter.settings.is_min_size
    assert not limiter.can_sample(size=99, count=1) and limiter.can_sample(size=100, count=10**9)
    limiter.inserted(10**6)
    assert limiter.can_insert(size=10**6, count=10**6)


def test_inserts_wait_off_never_holds_an_insert_back_but_samples_still_wait():
    limiter = RateLimiter(ratio(inserts_wait=False))
    limiter.inserted(10**6)
    assert limiter.can_insert(size=10**6, count=10**6)
    limiter.sampled(int(limiter.error() - limiter.settings.min_diff))  # exactly at the window's low end
    assert not limiter.can_sample(size=10**6, count=1)


def test_a_paused_limiter_lets_everything_through_and_keeps_counting():
    limiter = RateLimiter(ratio(), paused=True)
    assert limiter.can_sample(size=0, count=10**6) and limiter.can_insert(size=0, count=10**6)
    limiter.inserted(7)
    limiter.sampled(3)
    assert (limiter.inserts, limiter.samples) == (7, 3)
    assert limiter.allows(INSERT, 0, 1) and limiter.allows(SAMPLE, 0, 1)


@pytest.mark.parametrize(("settings", "field", "why"), [
    (dict(spi=0.0), "samples_per_insert", "positive"),
    (dict(spi=math.inf), "samples_per_insert", "positive"),
    (dict(min_size=0), "min_size_to_sample", "at least 1"),
    (dict(min_size=2_000), "min_size_to_sample", "exceeds buffer_size"),
    (dict(error_buffer=(10.0, 5.0)), "error_buffer", "is empty"),
    # Reverb: the window must reach below spi x min_size, or sampling deadlocks at min size.
    (dict(spi=1.0, min_size=10, error_buffer=(11.0, 500.0)), "error_buffer", "low end 11 is above"),
    # Reverb: narrower than 2 x max(1, spi) could block both sides.
    (dict(spi=3.0, min_size=10, error_buffer=2.9), "error_buffer", "narrower than 2 x max(1, samples_per_insert)"),
    # Whole episodes and batches: the window must hold one episode's inserts plus one batch.
    (dict(spi=1.0, min_size=10, error_buffer=100.0), "error_buffer", "must hold one whole episode"),
    # Eviction could leave fewer than min size stored while inserts wait for samples.
    (dict(spi=1.0, min_size=950, error_buffer=1_000.0), "min_size_to_sample", "evicting to make room"),
])
def test_settings_that_can_deadlock_are_refused_naming_the_field(settings, field, why):
    with pytest.raises(InvalidArgument, match=rf"^{field}: .*{re.escape(why)}"):
        ratio(**settings).check(batch_size=16, longest_episode=200, buffer_size=1_000)


def test_the_episode_and_batch_rule_is_exact_and_inserts_wait_off_lifts_it():
    # Width 2 x 100 = 200 = samples_per_insert x longest episode (184) + batch (16): just enough.
    ratio(spi=1.0, min_size=10, error_buffer=100.0).check(batch_size=16, longest_episode=184, buffer_size=1_000)
    with pytest.raises(InvalidArgument, match="must hold one whole episode"):
        ratio(spi=1.0, min_size=10, error_buffer=100.0).check(batch_size=17, longest_episode=184, buffer_size=1_000)
    ratio(spi=1.0, min_size=10, error_buffer=100.0, inserts_wait=False).check(
        batch_size=16, longest_episode=1_000, buffer_size=1_000)


def test_within_the_checked_window_one_side_can_always_go():
    # Every error value between the window's ends: an episode can go in, or a batch come out.
    settings = ratio(spi=1.5, min_size=20, error_buffer=120.0)
    settings.check(batch_size=32, longest_episode=100, buffer_size=10_000)
    for samples in range(0, 400):
        limiter = RateLimiter(settings, inserts=200, samples=samples)
        if settings.min_diff <= limiter.error() <= settings.max_diff:
            assert limiter.can_insert(size=200, count=100) or limiter.can_sample(size=200, count=32), samples


def test_buffer_settings_build_the_limiter_and_name_what_is_missing():
    assert BufferSettings().rate_limiter() is None  # the default: no limiter
    assert BufferSettings(min_size_to_sample=10).rate_limiter() == LimiterSettings.min_size(10)
    made = BufferSettings(buffer_size=10_000, min_history=0, batch_size=16, samples_per_insert=2.0,
                          min_size_to_sample=100, error_buffer="-100,1000", max_episode_length=200).rate_limiter()
    assert made == LimiterSettings(2.0, 100, -100.0, 1000.0)
    with pytest.raises(InvalidArgument, match="^error_buffer: needed with samples_per_insert"):
        BufferSettings(samples_per_insert=2.0, min_size_to_sample=100)
    with pytest.raises(InvalidArgument, match="^error_buffer: given without samples_per_insert"):
        BufferSettings(error_buffer="5")
    with pytest.raises(InvalidArgument, match="^max_episode_length: 2,000 exceeds buffer_size 1,000"):
        BufferSettings(buffer_size=1_000, min_history=0, max_episode_length=2_000)
    # No max_episode_length: an episode may be the whole buffer, which the window must then hold.
    with pytest.raises(InvalidArgument, match="1,000,000 transitions, max_episode_length"):
        BufferSettings(samples_per_insert=1.0, min_size_to_sample=100, error_buffer="1000")


@pytest.mark.parametrize(("text", "value"), [("5", 5.0), ("0", 0.0), ("-5,10", (-5.0, 10.0)), (" 1 , 2 ", (1.0, 2.0))])
def test_error_buffer_is_a_number_or_a_pair(text, value):
    assert parse_error_buffer(text) == value


@pytest.mark.parametrize("text", ["", "x", "-1", "1,2,3", "inf", "nan,1"])
def test_a_malformed_error_buffer_is_refused(text):
    with pytest.raises(InvalidArgument, match="^error_buffer: "):
        parse_error_buffer(text)


def test_rebasing_puts_the_error_where_the_ratio_leaves_it():
    settings = ratio(spi=2.0, min_size=10, error_buffer=50.0)
    limiter = RateLimiter.rebased(settings, size=1_000)
    assert limiter.error() == 2.0 * 10  # the middle of the window: neither side is held back
    assert limiter.can_insert(size=1_000, count=25) and limiter.can_sample(size=1_000, count=50)
    small = RateLimiter.rebased(settings, size=4)  # still below min size: nothing counted as sampled
    assert (small.inserts, small.samples) == (4, 0)


def test_the_state_round_trips_through_json_with_unbounded_windows():
    for settings in (ratio(), LimiterSettings.min_size(7)):
        state = LimiterState(settings, inserts=123, samples=45, paused=True)
        assert LimiterState.from_json(state.to_json()) == state
    assert LimiterState(LimiterSettings.min_size(7), 0, 0).to_json()["settings"]["max_diff"] == "inf"
