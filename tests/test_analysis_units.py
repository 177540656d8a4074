"""Small pure pieces: the grid conventions, durations and instants, the JSON cleaner, Table trimming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thermograd.analysis.align import bin_to_grid, place_on_grid
from thermograd.analysis.errors import InputError
from thermograd.analysis.output.report import clean
from thermograd.analysis.table import Table
from thermograd.analysis.timeparse import parse_duration_s, parse_instant_s, parse_iso_s


def test_bin_to_grid_takes_the_interval_ending_at_each_row():
    t = np.array([0.0, 0.4, 1.0, 1.2, 1.9, 4.0])
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    last = bin_to_grid(t, v, 0.0, 1.0, 5)
    mean = bin_to_grid(t, v, 0.0, 1.0, 5, how="mean")
    # row k holds (k-1, k]: row 1 = {0.4, 1.0}, row 2 = {1.2, 1.9}, row 3 empty (a gap stays a gap)
    np.testing.assert_array_equal(last, [1.0, 3.0, 5.0, np.nan, 6.0])
    np.testing.assert_array_equal(mean, [1.0, 2.5, 4.5, np.nan, 6.0])


def test_place_on_grid_uses_evaluation_timestamps():
    out = place_on_grid(np.array([10.0, 12.0, 99.0]), np.array([1.0, 2.0, 3.0]), 10.0, 1.0, 4)
    np.testing.assert_array_equal(out, [1.0, np.nan, 2.0, np.nan])


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15), ("1m30s", 90), ("2h", 7200), ("0.5", 0.5),
                                               ("250ms", 0.25), ("1w", 604800)])
def test_durations(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


def test_bad_duration_and_instant_are_input_errors():
    with pytest.raises(InputError, match="not a duration"):
        parse_duration_s("5 minutes")
    with pytest.raises(InputError, match="not a time"):
        parse_instant_s("tomorrow")


def test_instants_honour_offsets():
    assert parse_instant_s("1700000000") == 1700000000
    assert parse_iso_s("2025-10-28T09:00:00+01:00") == parse_iso_s("2025-10-28T08:00:00Z")
    assert parse_instant_s("2025-10-28T08:00:00") == parse_iso_s("2025-10-28T08:00:00+00:00")


def test_clean_removes_every_non_finite_value():
    dirty = {"a": np.float64("nan"), "b": [1.0, float("inf"), np.int64(3)], "c": np.array([np.nan, 2.0]),
             "d": np.bool_(True)}
    assert json.loads(json.dumps(clean(dirty), allow_nan=False)) == {"a": None, "b": [1.0, None, 3],
                                                                     "c": [None, 2.0], "d": True}


def test_table_trim_keeps_the_rows_with_training_data():
    grad = np.array([np.nan, np.nan, 1.0, np.nan, 2.0, np.nan])
    table = Table(100.0, 5.0, 6, {"grad_norm": grad, "rle": np.arange(6.0)})
    trimmed = table.trimmed(["grad_norm"])
    assert trimmed.start_s == 110.0 and trimmed.n == 3
    np.testing.assert_array_equal(trimmed.columns["rle"], [2.0, 3.0, 4.0])
