"""finalize(): raw model middles in, insertable text (or None) out. Every row is
(language, document with ‸ at the cursor, raw middle, expected text)."""

import pytest

from dgemma_ls.context import build_context
from dgemma_ls.postprocess import bracket_events, finalize, strip_empty, unclosed_openers
from dgemma_ls.syntax import SyntaxTree

CURSOR = "‸"


def words(text: str) -> int:
    return len(text.split())


def check(language: str, marked: str, middle: str, expected: str | None) -> None:
    cursor = marked.index(CURSOR)
    tree = SyntaxTree(marked.replace(CURSOR, ""), language)
    ctx = build_context(tree, cursor, count_tokens=words)
    assert finalize(middle, ctx, tree) == expected


@pytest.mark.parametrize(
    "language, marked, middle, expected",
    [
        # line scope: the rest of the line only
        ("python", "x = foo(‸)\n", "a, b)\nprint(x)", "a, b"),
        ("javascript", "const xs = [1, 2].map((x) => ‸);\n", "x * 2);\nfoo();", "x * 2"),
        ("markdown", "# Title\n\nSome ‸\n", "text here\nmore", "text here"),
        ("text", "Dear ‸,\n", "Bob,\nSincerely", "Bob"),
        # statement scope: one (compound) statement
        ("python", "def f(a):\n    b = a + 1\n    ‸\n    return b\n", "c = b * 2\n    d = c\n", "c = b * 2"),
        ("python", "if x:\n    y = 1\n‸\n", "else:\n    y = 2\nz = 3", "else:\n    y = 2"),
        ("javascript", "let a = 1;\n‸\n", "if (a) {\n  b();\n}\nc();", "if (a) {\n  b();\n}"),
        ("json", '{\n  "a": 1,\n  ‸\n}\n', '"b": 2\n}', '"b": 2'),
        ("markdown", "Intro ‸\n", "paragraph.\n\n## Next", "paragraph."),
        ("text", "line one\n‸\n", "line two\nline three", "line two"),
        # block scope: the body, up to the line that dedents
        ("python", "def f(a):‸\n", "\n    return a + 1\nprint(f(1))\n", "\n    return a + 1"),
        ("javascript", "if (ok) {\n  ‸\n}\n", "run();\n} else {\n  stop();\n}", "run();\n} else {\n  stop();"),
        ("typescript", "function add(a: number, b: number): number {‸}\n", "\n    return a + b;\n}", "\n    return a + b;\n"),
        ("json", "{‸}\n", '\n  "a": 1,\n  "b": [2, 3]\n}\n', '\n  "a": 1,\n  "b": [2, 3]\n'),
    ],
)
def test_cut_to_scope(language, marked, middle, expected):
    check(language, marked, middle, expected)


@pytest.mark.parametrize(
    "language, marked, middle, expected",
    [
        # char-wise: the middle's tail repeats the rest of the line
        ("python", "name = 'wor‸'\n", "ld'", "ld"),
        ("javascript", "call(‸);\n", "a, b);", "a, b"),
        ("typescript", "const x: number = ‸;\n", "42;", "42"),
        ("tsx", "const e = <div>‸</div>;\n", "{name}</div>", "{name}"),
        ("markdown", "# Title\n\nSome ‸ here\n", "text here", "text"),
        ("text", "one ‸ three\n", "two three", "two"),
        # a short word overlap is kept: "fo" + "o" + "o(1)" may be what was meant
        ("python", "val = fo‸o(1)\n", "o", "o"),
        # line-wise: the middle runs into the next line of the suffix
        ("python", "def f():\n    x = 1‸\n    return x\n", "\n    y = 2\n    return x", "\n    y = 2"),
        ("javascript", "a();\n‸\nb();\n", "c();\nb();", "c();"),
        ("json", '[\n  1,\n  ‸\n  "last"\n]\n', '2,\n  "last"', "2,"),
    ],
)
def test_trim_overlap_with_suffix(language, marked, middle, expected):
    check(language, marked, middle, expected)


@pytest.mark.parametrize(
    "language, marked, middle, expected",
    [
        # the model assumed column 0 for a nested body: moved under its opener
        ("python", "class A:\n    def f(self):‸\n", "\nreturn 1\n", "\n        return 1"),
        # indented twice after an indented cursor
        ("python", "def f(a):\n    ‸\n", "    return a", "return a"),
        # tabs file, spaces from the model
        ("python", "def f():\n\treturn 1\ndef g():\n\t‸\n", "x = 1\n    y = 2", "x = 1\n\ty = 2"),
        ("javascript", "function f() {\n  ‸\n}\n", "return 1;\n}", "return 1;"),
        ("typescript", "class A {\n    m(): number {‸\n    }\n}\n", "\nreturn 1;", "\n        return 1;"),
        ("json", '{\n    "a": {‸}\n}\n', '\n"b": 1\n}', '\n        "b": 1\n    '),
    ],
)
def test_reindent(language, marked, middle, expected):
    check(language, marked, middle, expected)


@pytest.mark.parametrize(
    "language, marked, middle, expected",
    [
        ("python", "x = foo(‸)\n", "a, b))", "a, b"),
        ("python", "def f():\n    return (1 +‸\n", " 2))", " 2)"),
        ("python", "xs = [‸\n", "1, 2])", "1, 2]"),
        ("javascript", "function f() {‸}\n", "\n  return 1;\n}\n", "\n  return 1;\n"),
        ("typescript", "const p = new Promise((resolve) => {‸});\n", "\n  resolve(1);\n});", "\n  resolve(1);\n"),
        ("json", '{"a": ‸}\n', "1}", "1"),
        ("json", '{"a": [‸]}\n', "1, 2]}", "1, 2"),
        # brackets inside strings and comments do not count
        ("python", "print(‸)\n", "')', '('", "')', '('"),
        # a comment would swallow the suffix's closer: rejected
        ("python", "print(‸)\n", "x # )", None),
        # Markdown and plain text have no brackets to balance
        ("markdown", "see (‸)\n", "this)", "this"),
        ("text", "a (‸)\n", "b))", "b)"),
    ],
)
def test_balance_brackets(language, marked, middle, expected):
    check(language, marked, middle, expected)


@pytest.mark.parametrize(
    "language, marked, middle, expected",
    [
        ("python", "x = ‸\n", "(1 +", None),
        ("python", "def f(a):\n    return ‸\n", "a +* 1", None),
        ("python", "x = foo(‸\n", "1)", "1)"),
        ("javascript", "let a = ‸;\n", "{ b: }", None),
        ("typescript", "let s: string = ‸\n", "'a' +", None),
        ("tsx", "const e = ‸;\n", "<div>", None),
        ("json", '{"a": 1, ‸}\n', '"b": }', None),
        ("json", '{"a": 1, ‸}\n', '"b": 2', '"b": 2'),
        ("markdown", "# T\n‸\n", "- item", "- item"),
        ("text", "x ‸\n", "(((", "((("),
        # nothing left after trimming
        ("python", "x = ‸\n", "   \n ", None),
        ("javascript", "f(‸);\n", ");", None),
    ],
)
def test_reject_fills_that_break_the_parse(language, marked, middle, expected):
    check(language, marked, middle, expected)


@pytest.mark.parametrize(
    "middle, expected",
    [
        ("", None),
        (None, None),
        (" \n\t\n", None),
        ("x = 1  \n\n  \n", "x = 1  "),  # the last line's spaces may lead into the suffix
        ("a  \nb ", "a\nb "),
        ("\n    return 1", "\n    return 1"),
    ],
)
def test_strip_empty(middle, expected):
    assert strip_empty(middle) == expected


@pytest.mark.parametrize(
    "language, text, expected",
    [
        ("python", "f(a[1], '(', \"]\")  # {\nx = {", ["{"]),
        ("python", '"""\n(\n"""\n(', ["("]),
        ("javascript", "f(`(${a}`, /* { */ [ // (\n", ["(", "["]),
        ("typescript", "const s = 'it\\'s (';\nf(", ["("]),
        ("json", '{"a": "[", "b": [', ["{", "["]),
    ],
)
def test_unclosed_openers(language, text, expected):
    assert unclosed_openers(text, language) == expected


def test_bracket_events_skip_unterminated_strings_at_line_end():
    assert list(bracket_events("x = 'abc(\ny = (", "python")) == [(14, "(")]


@pytest.mark.parametrize(
    "marked, middle, ended",
    [
        # statement scope: still inside the statement (open bracket, its own lines) vs the next one begun
        ("def f(a):\n    b = a + 1\n    ‸\n    return b\n", "c = foo(b,\n", False),
        ("def f(a):\n    b = a + 1\n    ‸\n    return b\n", "c = foo(b,\n        2)\n", False),
        ("def f(a):\n    b = a + 1\n    ‸\n    return b\n", "c = b * 2\n", False),
        ("def f(a):\n    b = a + 1\n    ‸\n    return b\n", "c = b * 2\n    d", True),
        # block scope: the body until a line dedents
        ("def f(a):‸\n", "\n    return a + 1\n", False),
        ("def f(a):‸\n", "\n    return a + 1\npri", True),
    ],
)
def test_scope_ended_says_when_a_middle_written_token_by_token_left_its_scope(marked, middle, ended):
    from dgemma_ls.postprocess import cut_to_scope, scope_ended

    cursor = marked.index(CURSOR)
    tree = SyntaxTree(marked.replace(CURSOR, ""), "python")
    ctx = build_context(tree, cursor, count_tokens=words)
    assert scope_ended(middle, ctx) is ended
    assert middle.startswith(cut_to_scope(middle, ctx))
