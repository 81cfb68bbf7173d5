"""The one text-table formatter."""

import pytest

from medray.cli.table import format_table


def test_columns_are_as_wide_as_their_widest_cell_and_aligned_as_asked():
    text = format_table(["NAME", "N"], [["a", 1], ["longer", 22]], align="<>")
    assert text.splitlines() == ["NAME     N", "a        1", "longer  22"]


def test_a_title_is_underlined_and_trailing_spaces_are_stripped():
    lines = format_table(None, [["key", ""], ["k", "v"]], title="summary").splitlines()
    assert lines == ["summary", "-------", "key", "k    v"]


@pytest.mark.parametrize("rows,align", [([["a", "b"], ["c"]], None), ([["a", "b"]], "<"), ([["a"]], "^")])
def test_ragged_rows_or_a_bad_alignment_are_refused(rows, align):
    with pytest.raises(ValueError):
        format_table(None, rows, align=align)


def test_a_rule_under_the_headers_is_as_wide_as_each_column():
    text = format_table(["NAME", "N"], [["longer", 22]], align="<>", rule=True)
    assert text.splitlines() == ["NAME     N", "------  --", "longer  22"]


def test_a_markdown_table_carries_its_alignment_in_the_rule_row():
    text = format_table(["c", "server", "ratio"], [[1, "medray", "0.90x"], [1, "fastapi", ""]], align="><>",
                        markdown=True)
    assert text.splitlines() == ["| c | server | ratio |", "|---:|---|---:|", "| 1 | medray | 0.90x |",
                                 "| 1 | fastapi |  |"]
    with pytest.raises(ValueError):
        format_table(None, [["a"]], markdown=True)
