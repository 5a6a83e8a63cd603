"""The per-minute series of finished requests (results/series.py): its window and percentiles."""

from __future__ import annotations

from openhqm.results.series import SAMPLE_PER_MINUTE, percentile, summarise, window


def test_the_window_ends_with_the_current_minute_and_starts_on_a_minute() -> None:
    since, until = window(15, 1_000_000_010.5)  # 10.5 s into a minute
    assert (until - since, since % 60, until) == (900.0, 0.0, 1_000_000_020.0)


def test_percentiles_are_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert [percentile(ordered, q) for q in (0.5, 0.95, 0.99)] == [50.0, 95.0, 99.0]
    assert percentile([7.0], 0.99) == 7.0


def test_a_minute_counts_completed_and_failed_only_and_samples_its_latest_for_percentiles() -> None:
    since = 6000.0
    rows = [(since + 1 + i * 0.001, 1.0, "COMPLETED") for i in range(SAMPLE_PER_MINUTE)]
    rows += [(since + 0.5, 100.0, "COMPLETED"),  # the oldest of the minute: beyond the sample
             (since + 2, 0.5, "FAILED"), (since + 3, 9.0, "CANCELLED"), (since - 1, 9.0, "COMPLETED")]
    [minute, empty] = summarise(rows, since, since + 120)
    assert (minute.at, minute.completed, minute.failed) == (since, SAMPLE_PER_MINUTE + 1, 1)
    assert minute.p99_ms == 1000.0  # the 100 s outlier fell outside the latest SAMPLE_PER_MINUTE
    assert (empty.at, empty.completed, empty.failed, empty.p50_ms) == (since + 60, 0, 0, None)
