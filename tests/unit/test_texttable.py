"""The one text-table renderer: aligned columns, right-aligned counts, an unpadded last column."""

from __future__ import annotations

from sd35_provision.texttable import render_rows


def test_columns_align_two_spaces_apart_without_trailing_spaces() -> None:
    rows = [("HOST", "STATUS", "DETAIL"), ("gpu-a1", "changed", ""), ("b", "unchanged", "restarted the service")]
    assert render_rows(rows).splitlines() == [
        "HOST    STATUS     DETAIL",
        "gpu-a1  changed",
        "b       unchanged  restarted the service",
    ]


def test_counts_align_right_and_the_last_column_never_widens_the_others() -> None:
    rows = [("HOST", "CHANGES", "DETAIL"), ("a", "12", "x" * 40), ("bb", "3", "-")]
    assert render_rows(rows, right_aligned={1}).splitlines() == [
        "HOST  CHANGES  DETAIL",
        "a          12  " + "x" * 40,
        "bb          3  -",
    ]


def test_no_rows_is_an_empty_table() -> None:
    assert render_rows([]) == ""
