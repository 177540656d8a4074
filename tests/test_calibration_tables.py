"""scripts/calibration_tables.py: the docs' calibration tables come from the bench's JSON, between markers."""

import pytest

from scripts.calibration_tables import BEGIN, END, replaced


def test_only_the_block_between_the_markers_is_replaced():
    page = f"intro\n\n{BEGIN}\n| old | table |\n{END}\n\nprose stays\n"
    new = replaced(page, "| new | table |\n")
    assert new == f"intro\n\n{BEGIN}\n\n| new | table |\n\n{END}\n\nprose stays\n"
    assert replaced(new, "| new | table |") == new  # idempotent: --check passes right after a rewrite


def test_a_page_without_the_markers_is_refused():
    with pytest.raises(ValueError, match="calibration-tables"):
        replaced("no markers here\n", "| t |")
