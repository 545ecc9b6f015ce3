"""FIM context extraction: scope and indentation at the cursor, syntax-aligned windows
within token budgets, snippets from other files, and the recent-chunks ring buffer.
‸ marks the cursor in every document below."""

import pytest

from dgemma_ls.context import RecentChunks, Snippet, build_context, chunk_around
from dgemma_ls.syntax import SyntaxTree

CURSOR = "‸"


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def context_at(language: str, marked: str, **kwargs):
    cursor = marked.index(CURSOR)
    tree = SyntaxTree(marked.replace(CURSOR, ""), language)
    return build_context(tree, cursor, count_tokens=words, **kwargs)


@pytest.mark.parametrize(
    "language, marked, scope, indent, outer_indent, max_tokens",
    [
        ("python", "def f(x):\n    return x +‸ 1\n", "line", "    ", "    ", 24),
        ("python", "def f(x):‸\n", "block", "    ", "", 128),
        ("python", "def f(x):\n    ‸\n", "block", "    ", "", 128),
        ("python", "def f(x):\n    y = x\n    ‸\n    return y\n", "statement", "    ", "    ", 48),
        ("python", "x = 1‸\n", "statement", "", "", 48),
        ("python", "d = {'a':‸\n", "statement", "", "", 48),
        ("python", "s = 'ab‸c'\n", "line", "", "", 24),
        ("python", "x = 1  # note‸\n", "line", "", "", 24),
        ("javascript", "function f() {‸}\n", "block", "  ", "", 128),
        ("javascript", "function f() {\n  ‸\n}\n", "block", "  ", "", 128),
        ("javascript", "foo(‸);\n", "line", "", "", 24),
        ("javascript", "const a = 1;\n‸\n", "statement", "", "", 48),
        ("typescript", "class A {\n    m(): number {‸\n    }\n}\n", "block", "        ", "    ", 128),
        ("tsx", "const e = <div>‸</div>;\n", "line", "", "", 24),
        ("json", "{‸}\n", "block", "  ", "", 128),
        ("json", '{\n  "a": 1,\n  ‸\n}\n', "statement", "  ", "  ", 48),
        ("json", '{"a": ‸1}\n', "line", "", "", 24),
        ("markdown", "# Title\n\nSome ‸text\n", "line", "", "", 24),
        ("markdown", "# Title\n‸\n", "statement", "", "", 48),
        ("text", "hello ‸world\n", "line", "", "", 24),
        ("text", "hello\n\t‸\n", "statement", "\t", "\t", 48),
    ],
)
def test_scope_and_indent(language, marked, scope, indent, outer_indent, max_tokens):
    ctx = context_at(language, marked)
    assert (ctx.scope, ctx.indent, ctx.outer_indent, ctx.max_middle_tokens) == (
        scope,
        indent,
        outer_indent,
        max_tokens,
    )


PYTHON = """import os
from typing import List


def helper(a):
    return a * 2


class Box:
    def __init__(self, items):
        self.items = items

    def total(self):
        s = 0
        for item in self.items:
            s += ‸
        return s

    def size(self):
        return len(self.items)


def main():
    print(Box([1]).total())
"""

JAVASCRIPT = """import { readFile } from "fs";

function parse(text) {
  const lines = text.split("\\n");
  return lines.map((line) => ‸);
}

function unused() {
  return 0;
}
"""


@pytest.mark.parametrize(
    "language, marked, prefix_budget, suffix_budget, expected",
    [
        # Everything fits: the whole file.
        ("python", PYTHON, 1024, 256, PYTHON),
        # The enclosing class fits and so do the imports; helper() does not.
        (
            "python",
            PYTHON,
            30,
            12,
            "import os\nfrom typing import List\n\n\nclass Box:\n"
            + PYTHON.split("class Box:\n", 1)[1],
        ),
        # Only the enclosing method fits (the class does not): cut at its first line.
        (
            "python",
            PYTHON,
            14,
            4,
            "\n    def total(self):\n        s = 0\n        for item in self.items:\n"
            "            s += ‸\n        return s\n",
        ),
        # Not even the method fits: whole statements of the block, then nothing.
        ("python", PYTHON, 6, 1, "        for item in self.items:\n            s += ‸\n"),
        ("javascript", JAVASCRIPT, 1024, 256, JAVASCRIPT),
        (
            "javascript",
            JAVASCRIPT,
            18,
            4,
            'import { readFile } from "fs";\n\nfunction parse(text) {\n  const lines = text.split("\\n");\n'
            "  return lines.map((line) => ‸);\n}\n",
        ),
        ("typescript", JAVASCRIPT, 6, 2, "  return lines.map((line) => ‸);\n}\n"),
        ("json", '{\n  "a": [1, 2],\n  "b": {"c": ‸}\n}\n', 3, 2, '  "b": {"c": ‸}\n}\n'),
        ("markdown", "# A\n\ntext one\n\n## B\n\nmore ‸text\n\nend\n", 3, 1, "\n## B\n\nmore ‸text\n\n"),
        ("text", "a b\nc d\ne ‸f\ng h\ni j\n", 4, 3, "c d\ne ‸f\ng h\n"),
    ],
)
def test_windows_are_cut_at_syntax_boundaries(language, marked, prefix_budget, suffix_budget, expected):
    ctx = context_at(language, marked, prefix_budget=prefix_budget, suffix_budget=suffix_budget)
    assert ctx.prefix + CURSOR + ctx.suffix == expected


def test_window_offsets_point_into_the_document():
    ctx = context_at("python", PYTHON, prefix_budget=14, suffix_budget=4)
    text = PYTHON.replace(CURSOR, "")
    assert text[ctx.prefix_start : ctx.cursor] == ctx.prefix
    assert text[ctx.cursor : ctx.suffix_end] == ctx.suffix


SNIPPETS = [
    Snippet("file:///u.py", "def util(x):\n    return x"),
    Snippet("file:///big.py", "a " * 50),  # over the budget: left out
]


@pytest.mark.parametrize(
    "language, marked, expected_prefix",
    [
        ("python", "x = ‸\n", "# file:///u.py\n# def util(x):\n#     return x\nx = "),
        ("javascript", "x = ‸\n", "// file:///u.py\n// def util(x):\n//     return x\nx = "),
        ("typescript", "x = ‸\n", "// file:///u.py\n// def util(x):\n//     return x\nx = "),
        ("markdown", "# T\n‸", "<!-- file:///u.py\ndef util(x):\n    return x\n-->\n# T\n"),
        ("json", "{‸}", "{"),
        ("text", "a ‸", "a "),
    ],
)
def test_snippets_are_prepended_as_comments(language, marked, expected_prefix):
    ctx = context_at(language, marked, extra=SNIPPETS, extra_budget=20)
    assert ctx.prefix == expected_prefix


@pytest.mark.parametrize(
    "language, document, placeholder, expected",
    [
        ("python", "def f():\n    ...\n", "...", ("def f():\n    ", "\n", "block", "    ", "")),
        (
            "python",
            "def f():\n    # TODO: sum\n    return 0\n",
            "# TODO: sum",
            ("def f():\n    ", "\n    return 0\n", "block", "    ", ""),
        ),
        ("javascript", "let x = f(old);\n", "old", ("let x = f(", ");\n", "block", "", "")),
    ],
)
def test_replace_end_builds_the_context_without_the_replaced_text(language, document, placeholder, expected):
    start = document.index(placeholder)
    tree = SyntaxTree(document, language)
    ctx = build_context(
        tree, start, count_tokens=words, replace_end=start + len(placeholder), scope="block"
    )
    assert (ctx.prefix, ctx.suffix, ctx.scope, ctx.indent, ctx.outer_indent) == expected
    assert (ctx.cursor, ctx.replace_end) == (start, start + len(placeholder))
    assert document[ctx.replace_end : ctx.suffix_end] == ctx.suffix


def test_recent_chunks_keep_the_newest_and_drop_near_duplicates():
    chunks = RecentChunks(max_chunks=3)
    chunks.add("a", "x = 1\ny = 2\nz = 3")
    chunks.add("b", "q = 1")
    chunks.add("a", "x = 1\ny = 2\nz = 3\n")  # the same lines again: replaces the first
    chunks.add("c", "  \n")  # blank: ignored
    chunks.add("d", "d")
    chunks.add("e", "e")  # over max_chunks: "b" goes
    assert chunks.snippets() == [Snippet("e", "e"), Snippet("d", "d"), Snippet("a", "x = 1\ny = 2\nz = 3")]
    assert [s.uri for s in chunks.snippets(exclude_uri="e")] == ["d", "a"]


def test_recent_chunks_cut_long_chunks():
    chunks = RecentChunks(max_lines=2)
    chunks.add("a", "1\n2\n3\n4")
    assert chunks.snippets() == [Snippet("a", "1\n2")]


def test_chunk_around():
    text = "\n".join(str(i) for i in range(10))
    assert chunk_around(text, text.index("5"), lines=4) == "3\n4\n5\n6"


def test_a_huge_line_is_cut_to_the_token_budget():
    from dgemma_ls.context import MAX_TOKEN_CHARS, build_context
    from dgemma_ls.syntax import SyntaxTree

    text = "x = '" + "a" * 1_000_000 + "'\n"
    ctx = build_context(SyntaxTree(text, "python"), 500_000, count_tokens=lambda s: len(s) // 4,
                        prefix_budget=1024, suffix_budget=256)
    assert text[:500_000].endswith(ctx.prefix) and len(ctx.prefix) // 4 == 1024  # the whole budget, no more
    assert text[500_000:].startswith(ctx.suffix) and len(ctx.suffix) // 4 == 256
    assert len(ctx.prefix) < 1024 * MAX_TOKEN_CHARS


def test_a_dense_huge_line_is_cut_to_the_token_budget_in_tokens():
    """One character a token (binary junk, minified code through a small vocabulary): the cut by
    characters alone left 16x the budget in tokens (16,384 prompt tokens for a 1,024 budget)."""
    from dgemma_ls.context import build_context
    from dgemma_ls.syntax import SyntaxTree

    text = "x = '" + "\x01" * 1_000_000 + "'\n"
    ctx = build_context(SyntaxTree(text, "python"), 500_000, count_tokens=len, prefix_budget=1024,
                        suffix_budget=256)
    assert text[:500_000].endswith(ctx.prefix) and len(ctx.prefix) == 1024
    assert text[500_000:].startswith(ctx.suffix) and len(ctx.suffix) == 256
