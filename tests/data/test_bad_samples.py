"""Bad-sample accounting: counts by reason, one log line per sample id, a one-line error above the limit (a
`DataError`, so the command line prints it as one line) naming each reason's first example, exact state."""

import logging

import pytest

from tlv_jax.data.bad_samples import (
    DECODE_ERROR,
    MISSING_VIDEO,
    NOT_A_FILE,
    REASONS,
    TOO_LONG,
    BadSample,
    BadSampleCounter,
    TooManyBadSamples,
)
from tlv_jax.data.errors import DataError


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
    counter.record(DECODE_ERROR, "a", "truncated")
    counter.record(DECODE_ERROR, "b", "truncated")  # 2 of 2, but fewer than min_samples seen
    counter.add_good(197)
    counter.add_good(1)  # 2 of 200 = 1%: not above the limit
    with pytest.raises(TooManyBadSamples):
        counter.record(DECODE_ERROR, "c", "truncated")  # 3 of 201 > 1%: stop


def test_error_message_names_counts_reasons_and_a_first_example_of_each_on_one_line():
    counter = BadSampleCounter(max_fraction=0.01, min_samples=10)
    counter.add_good(8)
    counter.record(NOT_A_FILE, "d", "cannot read video /v/d.mp4: not a regular file\n(a directory)")
    with pytest.raises(TooManyBadSamples) as err:
        counter.record(MISSING_VIDEO, "x", "cannot read video /v/x.mp4: missing")
    message = str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError) and "\n" not in message
    assert message.startswith("2 of 10 samples were unusable") and "missing_video=1, not_a_regular_file=1" in message
    assert "missing_video: x: cannot read video /v/x.mp4: missing" in message
    assert "not_a_regular_file: d: cannot read video /v/d.mp4: not a regular file (a directory)" in message


def test_an_all_bad_stream_stops_at_the_minimum():
    counter = BadSampleCounter(max_fraction=0.01, min_samples=7)
    for i in range(6):
        counter.record(MISSING_VIDEO, f"s{i}", "gone")
    with pytest.raises(TooManyBadSamples, match="7 of 7 samples"):
        counter.record(MISSING_VIDEO, "s6", "gone")


def test_state_round_trip_and_merge():
    a = BadSampleCounter()
    a.add_good(10)
    a.record(TOO_LONG, "s", "long")
    b = BadSampleCounter()
    b.set_state(a.get_state())
    assert b.get_state() == a.get_state() and b.counts == a.counts and b.good == 10
    b.merge(a)
    assert b.good == 20 and b.counts[TOO_LONG] == 2
    older = {"good": 3, "bad_too_long": 1}  # saved before the other reasons existed
    b.set_state(older)
    assert b.good == 3 and b.counts == {**dict.fromkeys(REASONS, 0), TOO_LONG: 1}


def test_unknown_reason_is_rejected():
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSampleCounter().record("bogus", "x")
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSample("bogus", "x")
