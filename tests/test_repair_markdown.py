"""Markdown tables: finding them, and repairing one (column counts, delimiter row,
alignment markers, display-width padding, model-filled empty cells, the bounds on the model
calls: how many cells, how much prompt, when to stop)."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgemma_ls.repair_markdown import (
    MAX_FILL_CELLS,
    PREFIX_CHARS,
    SUFFIX_CHARS,
    display_width,
    find_tables,
    repair_table,
    repair_tables,
)


@pytest.mark.parametrize(
    "table, expected",
    [
        # already fine, only re-aligned
        ("| a | b |\n|---|---|\n| 1 | 2 |\n", "| a   | b   |\n| --- | --- |\n| 1   | 2   |\n"),
        # a short row is padded
        ("|a|b|c|\n|-|-|-|\n|1|\n", "| a   | b   | c   |\n| --- | --- | --- |\n| 1   |     |     |\n"),
        # a long row widens the header: no cell is dropped
        ("|a|b|\n|-|-|\n|1|2|3|\n", "| a   | b   |     |\n| --- | --- | --- |\n| 1   | 2   | 3   |\n"),
        # trailing empty cells beyond the header go
        ("|a|b|\n|-|-|\n|1|2|||\n", "| a   | b   |\n| --- | --- |\n| 1   | 2   |\n"),
        # a missing delimiter row is added
        ("| name | qty |\n| apple | 3 |", "| name  | qty |\n| ----- | --- |\n| apple | 3   |"),
        # a delimiter row with the wrong count is fixed, its alignments kept
        ("|a|b|c|\n|:-:|\n|1|2|3|", "|  a  | b   | c   |\n| :-: | --- | --- |\n|  1  | 2   | 3   |"),
        # alignment markers: left, center, right
        (
            "| l | c | r |\n|:--|:-:|--:|\n| long text | x | 12345 |\n",
            "| l         |  c  |     r |\n| :-------- | :-: | ----: |\n| long text |  x  | 12345 |\n",
        ),
        # no header row at all: an empty one
        ("|---|---|\n|1|2|\n", "|     |     |\n| --- | --- |\n| 1   | 2   |\n"),
        # rows without outer pipes
        ("a | b\n--|--\n1 | 2\n", "| a   | b   |\n| --- | --- |\n| 1   | 2   |\n"),
        # escaped pipes are content, not separators
        ("| a | b |\n|---|---|\n| x \\| y | 2 |\n", "| a      | b   |\n| ------ | --- |\n| x \\| y | 2   |\n"),
        # CJK characters take two columns
        ("| 名前 | 説明 |\n|--|--|\n| 東京 | capital |\n", "| 名前 | 説明    |\n| ---- | ------- |\n| 東京 | capital |\n"),
        # Windows line breaks and an indented table are kept
        ("  |a|b|\r\n  |-|-|\r\n  |1|2|\r\n", "  | a   | b   |\r\n  | --- | --- |\r\n  | 1   | 2   |\r\n"),
    ],
)
def test_repair_table(table, expected):
    assert repair_table(table).text == expected


class Model:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, prefix, suffix, max_tokens):
        self.calls.append((prefix, suffix))
        return self.answers.pop(0) if self.answers else []


def test_without_a_fill_the_repair_writes_no_content_and_counts_the_empty_cells():
    source = "|a||\n|1|\n|2|3|4|\n| |5|\n"
    repair = repair_table(source)
    assert repair.text == (
        "| a   |     |     |\n"
        "| --- | --- | --- |\n"
        "| 1   |     |     |\n"
        "| 2   | 3   | 4   |\n"
        "|     | 5   |     |\n"
    )
    # the header's empty cell, row 1's missing one, row 3's first; never column 3 (a long row's)
    assert (repair.empty_cells, repair.used_model) == (3, False)
    assert repair_tables("# T\n\n" + source).empty_cells == 3


def test_empty_cells_are_filled_by_the_model_in_reading_order():
    model = Model(["qty"], ["3 | 4", "x"], ["\n", "too | "], ["fig\nmore"])
    table = "| name | |\n|---|---|\n| apple | |\n| pear | |\n|  | 2 |\n"
    assert repair_table(table, fill=model).text == (
        "| name  | qty |\n| ----- | --- |\n| apple | 3   |\n| pear  | too |\n| fig   | 2   |\n"
    )
    assert model.calls[0] == ("| name | ", " |\n| --- | --- |\n| apple |  |\n| pear |  |\n|  | 2 |\n")
    assert model.calls[1] == ("| name | qty |\n| --- | --- |\n| apple | ", " |\n| pear |  |\n|  | 2 |\n")


def test_cells_stay_empty_without_a_usable_candidate():
    assert repair_table("|a|b|\n|-|-|\n|1||\n", fill=Model([None], ["|"])).text == (
        "| a   | b   |\n| --- | --- |\n| 1   |     |\n"
    )


def table(header: str, rows: list[str]) -> str:
    return "\n".join([header, "|" + "---|" * header.count("|", 1)] + rows) + "\n"


# 17 cells left empty: one more than the model fills in one repair
SPARSE = table("| a | b |", [f"| {i} | |" for i in range(MAX_FILL_CELLS + 1)])


@pytest.mark.parametrize(
    "source, answers, expected_rows, notes",
    [
        # a short row's missing cell is a cell to fill
        ("|a|b|\n|-|-|\n|1|\n", [["x"]], ["| 1   | x   |"], []),
        # a long row is a malformed row: its extra cells are kept, the new column is never filled
        (
            "|a|b|\n|-|-|\n|1|2|3|\n|4|5|\n",
            [],
            ["| 1   | 2   | 3   |", "| 4   | 5   |     |"],
            ["line 3: more cells than the header's 2; the extra cells are kept in new columns, left empty elsewhere"],
        ),
        # no header row: an empty one is added, and the model does not name the columns
        ("|---|---|\n|1||\n", [["x"]], ["|     |     |", "| 1   | x   |"], []),
        # a table sparse on purpose: more empty cells than the bound, none filled
        (
            SPARSE,
            [["x"]] * (MAX_FILL_CELLS + 1),
            ["| 0   |     |", f"| {MAX_FILL_CELLS}  |     |"],
            [f"{MAX_FILL_CELLS + 1} empty cells: more than the {MAX_FILL_CELLS} the model fills in one repair, so none were filled"],
        ),
    ],
)
def test_which_cells_the_model_fills(source, answers, expected_rows, notes):
    model = Model(*answers)
    repair = repair_table(source, fill=model)
    assert [row for row in expected_rows if row not in repair.text.splitlines()] == []
    assert (repair.notes, len(model.calls)) == (notes, len(answers) if not notes else 0)


def test_one_long_row_in_a_long_table_costs_no_model_call_and_keeps_every_cell():
    rows = [f"| {i} | item {i} |" for i in range(2000)]
    rows[500] = "| " + " | ".join(f"z{k}" for k in range(12)) + " |"
    source = table("| n | name |", rows)
    model = Model()
    repair = repair_tables("# Items\n\n" + source, fill=model)
    assert model.calls == []
    assert repair.text.startswith("# Items\n\n")
    kept = [cell.strip() for line in repair.text.splitlines()[2:] for cell in line.split("|") if cell.strip()]
    assert [cell.strip() for cell in source.replace("---", "").split("|") if cell.strip()] == [
        cell for cell in kept if set(cell) != {"-"}
    ]
    assert repair.notes == [
        "line 505: more cells than the header's 2; the extra cells are kept in new columns, left empty elsewhere"
    ]


def test_a_cell_prompt_is_its_neighbourhood_not_the_whole_table():
    rows = [f"| {i} | v{i} |" for i in range(40)]
    rows[30] = "| 30 | |"
    model = Model(["x"])
    repair_table(table("| n | v |", rows), fill=model)
    (prefix, suffix), = model.calls
    assert prefix == "| n | v |\n| --- | --- |\n" + "".join(f"| {i} | v{i} |\n" for i in range(22, 30)) + "| 30 | "
    assert suffix == " |\n" + "".join(f"| {i} | v{i} |\n" for i in range(31, 35))


def test_a_cell_prompt_is_capped_when_rows_are_long():
    rows = [f"| {i} | {'w' * 10_000} |" for i in range(10)] + ["| 10 | |"] + [f"| {i} | {'w' * 10_000} |" for i in range(3)]
    model = Model(["x"])
    repair_table(table("| n | v |", rows), fill=model)
    (prefix, suffix), = model.calls
    assert (len(prefix), len(suffix)) == (PREFIX_CHARS, SUFFIX_CHARS)
    assert prefix.endswith("| 10 | ") and suffix.startswith(" |\n| 0 | www")


def test_should_stop_ends_the_model_calls_and_leaves_the_rest_empty():
    model = Model(["p"], ["q"], ["r"], ["s"], ["t"])
    source = table("| a | b |", [f"| {i} | |" for i in range(5)])
    repair = repair_table(source, fill=model, should_stop=lambda: len(model.calls) == 2)
    assert [line.split("|")[2].strip() for line in repair.text.splitlines()[2:]] == ["p", "q", "", "", ""]
    assert repair.notes == ["stopped: 3 empty cells were not filled"]


DOCUMENT = """# Title

| a | b |
|:--|--:|
| 1 | 2 |
| 3 |

Prose with a | pipe
and another | pipe.

| x | y |
| 1 | 2 |

```
| code | block |
| not | a table |
```

> | quoted | table |
> |---|---|
"""


def test_find_tables():
    spans = [(DOCUMENT[t.start : t.end], t.source) for t in find_tables(DOCUMENT)]
    assert spans == [
        ("| a | b |\n|:--|--:|\n| 1 | 2 |\n| 3 |", "grammar"),
        ("| x | y |\n| 1 | 2 |", "lines"),
    ]


def test_repair_tables_repairs_every_table_and_nothing_else():
    assert repair_tables(DOCUMENT).text == DOCUMENT.replace(
        "| a | b |\n|:--|--:|\n| 1 | 2 |\n| 3 |",
        "| a   |   b |\n| :-- | --: |\n| 1   |   2 |\n| 3   |     |",
    ).replace("| x | y |\n| 1 | 2 |", "| x   | y   |\n| --- | --- |\n| 1   | 2   |")


def test_a_run_the_grammar_splits_is_one_table():
    # tree-sitter-markdown reads `|  |` after a delimiter row as a second table's header
    document = "|  |\n|---|\n|  |\n|  |\n| 1 |\n"
    assert [(t.start, t.end) for t in find_tables(document)] == [(0, len(document) - 1)]
    assert repair_tables(document).text == "|     |\n| --- |\n|     |\n|     |\n| 1   |\n"


def test_a_lone_surrogate_is_noted_not_repaired():
    document = "| a | b |\n| \ud800 |\n"
    assert repair_tables(document).notes == ["not valid Unicode (a lone surrogate at offset 12): not repaired"]
    assert repair_tables(document).text == document


@pytest.mark.parametrize(
    "start, end, changed",
    [
        (0, 5, []),
        (DOCUMENT.index("| 3 |"), None, ["first", "second"]),
        (DOCUMENT.index("| x |"), DOCUMENT.index("| x |"), ["second"]),
    ],
)
def test_repair_tables_in_a_range(start, end, changed):
    repaired = repair_tables(DOCUMENT, start=start, end=end).text
    assert ("| :-- | --: |" in repaired) == ("first" in changed)
    assert ("| --- | --- |\n| 1   | 2   |" in repaired) == ("second" in changed)


@pytest.mark.parametrize(
    "language_text, width",
    [("abc", 3), ("名前", 4), ("ｶﾀｶﾅ", 4), ("e\u0301", 1), ("a\u200bb", 2), ("한국어", 6)],
)
def test_display_width(language_text, width):
    assert display_width(language_text) == width


# -- invariants over generated tables (hypothesis) ------------------------------------------

CELL = st.text(alphabet="ab 1-:名é\\", max_size=6).map(str.strip)
ROW = st.lists(CELL, min_size=0, max_size=6)


def data_cells(text: str) -> list[str]:
    """The non-empty cells of the table rows in text, delimiter rows left out, in order."""
    cells = []
    for line in text.splitlines():
        if "|" in line:
            row = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if not all(re.fullmatch(r":?-+:?", cell.replace(" ", "")) for cell in row if cell) or not any(row):
                cells += [cell for cell in row if cell]
    return cells


@settings(max_examples=150, deadline=None, database=None)
@given(
    header=ROW,
    delimiter=st.booleans(),
    body=st.lists(ROW, min_size=1, max_size=8),
    outer=st.booleans(),
)
def test_table_repair_keeps_every_cell_invents_none_and_leaves_the_prose(header, delimiter, body, outer):
    def line(row: list[str]) -> str:
        inner = " | ".join(row)
        return f"| {inner} |" if outer or len(row) < 2 else inner

    rows = [line(header)] + (["|" + "---|" * max(1, len(header))] if delimiter else []) + [line(r) for r in body]
    document = "Prose before.\n\n" + "\n".join(rows) + "\n\nProse after | with a pipe.\n"
    tables = find_tables(document)
    repaired = repair_tables(document)
    if not tables:
        assert repaired.text == document
        return
    span = document[tables[0].start : tables[-1].end]
    fixed = repaired.text[tables[0].start : len(repaired.text) - (len(document) - tables[-1].end)]
    assert repaired.text[: tables[0].start] == document[: tables[0].start]
    assert repaired.text.endswith(document[tables[-1].end :])
    assert data_cells(fixed) == data_cells(span)
    model = Model(*[["m"]] * 100)
    filled = repair_tables(document, fill=model)
    assert len(model.calls) <= MAX_FILL_CELLS
    assert data_cells(filled.text).count("m") - data_cells(document).count("m") == len(model.calls)
