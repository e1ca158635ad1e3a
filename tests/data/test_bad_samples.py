"""Bad-sample accounting: counts by reason, one log line per sample id, a clear error above the limit, exact state."""

import logging

import pytest

from tlv_jax.data.bad_samples import (
    MISSING_VIDEO,
    TOO_LONG,
    UNDECODABLE_VIDEO,
    BadSample,
    BadSampleCounter,
    TooManyBadSamples,
)


def test_counts_by_reason_and_logs_once_per_id(caplog):
    counter = BadSampleCounter(max_fraction=0.5, min_samples=1000)
    with caplog.at_level(logging.WARNING, logger="tlv_jax.data.bad_samples"):
        counter.record(MISSING_VIDEO, "v1", "/videos/v1.mp4 not found")
        counter.record(MISSING_VIDEO, "v1", "/videos/v1.mp4 not found")  # next epoch: counted again, not logged
        counter.record(TOO_LONG, "v2", "3100 > 3072 tokens")
    assert counter.counts[MISSING_VIDEO] == 2 and counter.counts[TOO_LONG] == 1 and counter.bad == 3
    assert [r.getMessage().count("v1") for r in caplog.records] == [2, 0]  # id and path of v1 logged once
    assert "v2" in caplog.records[1].getMessage() and "3100" in caplog.records[1].getMessage()
    assert "missing_video=2" in counter.summary() and "too_long=1" in counter.summary()


def test_raises_above_fraction_only_after_min_samples():
    counter = BadSampleCounter(max_fraction=0.01, min_samples=200)
    counter.record(UNDECODABLE_VIDEO, "a", "truncated")
    counter.record(UNDECODABLE_VIDEO, "b", "truncated")  # 2 of 2, but fewer than min_samples seen
    counter.add_good(197)
    counter.add_good(1)  # 2 of 200 = 1%: not above the limit
    with pytest.raises(TooManyBadSamples):
        counter.record(UNDECODABLE_VIDEO, "c", "truncated")  # 3 of 201 > 1%: stop


def test_error_message_names_counts_and_reasons():
    counter = BadSampleCounter(max_fraction=0.01, min_samples=10)
    counter.add_good(9)
    with pytest.raises(TooManyBadSamples, match=r"1 of 10 samples.*missing_video=1"):
        counter.record(MISSING_VIDEO, "x", "gone")


def test_state_round_trip_and_merge():
    a = BadSampleCounter()
    a.add_good(10)
    a.record(TOO_LONG, "s", "long")
    b = BadSampleCounter()
    b.set_state(a.get_state())
    assert b.get_state() == a.get_state() and b.counts == a.counts and b.good == 10
    b.merge(a)
    assert b.good == 20 and b.counts[TOO_LONG] == 2


def test_unknown_reason_is_rejected():
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSampleCounter().record("bogus", "x")
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSample("bogus", "x")
