"""Markdown tables: finding them, and repairing one (column counts, delimiter row,
alignment markers, display-width padding, model-filled empty cells)."""

import pytest

from dgemma_ls.repair_markdown import display_width, find_tables, repair_table, repair_tables


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
    assert repair_table(table) == expected


class Model:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, prefix, suffix, max_tokens):
        self.calls.append((prefix, suffix))
        return self.answers.pop(0) if self.answers else []


def test_empty_cells_are_filled_by_the_model_in_reading_order():
    model = Model(["qty"], ["3 | 4", "x"], ["\n", "too | "], ["fig\nmore"])
    table = "| name | |\n|---|---|\n| apple | |\n| pear | |\n|  | 2 |\n"
    assert repair_table(table, fill=model) == (
        "| name  | qty |\n| ----- | --- |\n| apple | 3   |\n| pear  | too |\n| fig   | 2   |\n"
    )
    assert model.calls[0] == ("| name | ", " |\n| --- | --- |\n| apple |  |\n| pear |  |\n|  | 2 |\n")
    assert model.calls[1] == ("| name | qty |\n| --- | --- |\n| apple | ", " |\n| pear |  |\n|  | 2 |\n")


def test_cells_stay_empty_without_a_usable_candidate():
    assert repair_table("|a|b|\n|-|-|\n|1||\n", fill=Model([None], ["|"])) == (
        "| a   | b   |\n| --- | --- |\n| 1   |     |\n"
    )


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
    assert repair_tables(DOCUMENT) == DOCUMENT.replace(
        "| a | b |\n|:--|--:|\n| 1 | 2 |\n| 3 |",
        "| a   |   b |\n| :-- | --: |\n| 1   |   2 |\n| 3   |     |",
    ).replace("| x | y |\n| 1 | 2 |", "| x   | y   |\n| --- | --- |\n| 1   | 2   |")


@pytest.mark.parametrize(
    "start, end, changed",
    [
        (0, 5, []),
        (DOCUMENT.index("| 3 |"), None, ["first", "second"]),
        (DOCUMENT.index("| x |"), DOCUMENT.index("| x |"), ["second"]),
    ],
)
def test_repair_tables_in_a_range(start, end, changed):
    repaired = repair_tables(DOCUMENT, start=start, end=end)
    assert ("| :-- | --: |" in repaired) == ("first" in changed)
    assert ("| --- | --- |\n| 1   | 2   |" in repaired) == ("second" in changed)


@pytest.mark.parametrize(
    "language_text, width",
    [("abc", 3), ("名前", 4), ("ｶﾀｶﾅ", 4), ("e\u0301", 1), ("a\u200bb", 2), ("한국어", 6)],
)
def test_display_width(language_text, width):
    assert display_width(language_text) == width
