"""The mocks' shared switches: the fault plan, the sliding window and the config merge."""

from __future__ import annotations

import random

import msgspec

from relaybox.mock_meta.control import SlidingLog, merged, take_failure


class Config(msgspec.Struct, frozen=True):
    fail_next: int = 0
    mode: str = "accept"


class Patch(msgspec.Struct, frozen=True):
    fail_next: int | msgspec.UnsetType = msgspec.UNSET
    mode: str | msgspec.UnsetType = msgspec.UNSET


def test_the_next_calls_fail_first_then_a_random_share() -> None:
    rng = random.Random(1)
    plan = [
        take_failure(rng, fail_next=n, next_failure=503, failure_rate=0.0, choices=[500])
        for n in (2, 1, 0)
    ]
    assert plan == [(1, 503), (0, 503), (0, None)]
    draws = [
        take_failure(rng, fail_next=0, next_failure=503, failure_rate=0.5, choices=[429])
        for _ in range(400)
    ]
    failed = sum(1 for _, failure in draws if failure == 429)
    assert 150 < failed < 250
    assert {failure for _, failure in draws} == {None, 429}


def test_the_window_admits_its_limit_then_says_how_long_to_wait() -> None:
    window = SlidingLog()
    assert [window.admit(10.0, 1.0, 2) for _ in range(3)] == [None, None, 1]
    assert window.admit(10.5, 1.0, 2) == 1  # the first two leave at 11.0
    assert window.admit(11.0, 1.0, 2) is None
    assert window.admit(11.0, 1.0, 0) is None  # no limit


def test_a_patch_changes_only_what_it_gives() -> None:
    config = Config(fail_next=3, mode="permanent")
    assert merged(config, Patch(fail_next=0)) == Config(fail_next=0, mode="permanent")
    assert merged(config, Patch(mode="accept"), skip=("mode",)) == config
