"""find_fill_targets(): what a "Fill in the middle" code action can fill. Documents mark
the cursor with ‸, or a selection with « and »; each expected target is
(kind, the text it replaces, scope, hint)."""

import pytest

from dgemma_ls.context import build_context
from dgemma_ls.placeholders import find_fill_targets
from dgemma_ls.syntax import SyntaxTree


def targets(language: str, marked: str):
    if "«" in marked:
        start = marked.index("«")
        end = marked.index("»") - 1
        text = marked.replace("«", "").replace("»", "")
    else:
        start = end = marked.index("‸")
        text = marked.replace("‸", "")
    tree = SyntaxTree(text, language)
    return [(t.kind, text[t.start : t.end], t.scope, t.hint) for t in find_fill_targets(tree, start, end)]


@pytest.mark.parametrize(
    "language, marked, expected",
    [
        # selections, in every language
        ("python", "x = «old»\n", [("selection", "old", "line", "")]),
        ("python", "def f():\n«    a = 1\n    return a»\n", [("selection", "    a = 1\n    return a", "block", "")]),
        ("javascript", "f(«1, 2»);\n", [("selection", "1, 2", "line", "")]),
        ("typescript", "«let a = 1;»\n", [("selection", "let a = 1;", "block", "")]),
        ("json", '{"a": «1»}', [("selection", "1", "line", "")]),
        ("markdown", "| «x» |\n", [("selection", "x", "line", "")]),
        ("text", "hello «world»", [("selection", "world", "line", "")]),
        # Python placeholders
        ("python", "def f():\n    ...‸\n", [("ellipsis", "...", "block", "")]),
        ("python", "def f(): ...‸\n", [("ellipsis", "...", "block", "")]),
        ("python", "def f():\n    ...  # TODO: parse‸\n", [("todo", "...  # TODO: parse", "block", "TODO: parse")]),
        ("python", "def f():\n    pass  # TODO: add‸\n", [("todo", "pass  # TODO: add", "block", "TODO: add")]),
        ("python", "def f():‸\n    pass  # TODO: add\n", [("todo", "pass  # TODO: add", "block", "TODO: add")]),
        ("python", "def f():\n    pass‸\n", [("empty_body", "pass", "block", "")]),
        ("python", 'def f():\n    """Doc."""‸\n', [("empty_body", "", "block", "")]),
        ("python", 'def f():\n    """Doc."""\n    pass‸\n', [("empty_body", "pass", "block", "")]),
        ("python", "x = 1\n    # TODO write g‸\n", [("todo", "# TODO write g", "block", "TODO write g")]),
        # not placeholders
        ("python", "def f():\n    return 1‸\n", []),
        ("python", "x = 1  # TODO: not alone‸\n", []),
        ("python", "for x in y:\n    pass‸\n", []),
        ("python", "x = ...‸\n", []),
        ("python", "def f():\n    pass\n\n\nx = 1‸\n", []),
        # JavaScript / TypeScript
        ("javascript", "function f() {}‸\n", [("empty_body", "", "block", "")]),
        ("javascript", "const g = () => {‸};\n", [("empty_body", "", "block", "")]),
        ("javascript", "function f() {\n  // TODO: sort‸\n}\n", [("todo", "// TODO: sort", "block", "TODO: sort")]),
        ("javascript", "if (x) {}‸\n", []),
        ("typescript", "class A {\n  m(): void {}‸\n}\n", [("empty_body", "", "block", "")]),
        ("typescript", "  /* FIXME: cache */‸\n", [("todo", "/* FIXME: cache */", "block", "FIXME: cache")]),
        ("tsx", "function C() {\n}‸\n", [("empty_body", "\n", "block", "")]),
        # JSON has no placeholders
        ("json", '{"a": "TODO"‸}', []),
        # Markdown and plain text: a line that is only a TODO
        ("markdown", "# T\n<!-- TODO: intro -->‸\n", [("todo", "<!-- TODO: intro -->", "block", "TODO: intro")]),
        ("markdown", "# T\nsome TODO‸ here\n", []),
        ("text", "  TODO: write‸\n", [("todo", "TODO: write", "block", "TODO: write")]),
        ("text", "nothing‸\n", []),
    ],
)
def test_find_fill_targets(language, marked, expected):
    assert targets(language, marked) == expected


DEEP_LIST = "[" * 1200 + "]" * 1200
DEEP_CALL = "f(" * 1500 + ")" * 1500


@pytest.mark.parametrize(
    "language, marked, expected",
    [
        ("python", f"x = {DEEP_LIST}‸\n", []),
        ("python", f"def f():\n    x = {DEEP_LIST}\n    ...‸\n", [("ellipsis", "...", "block", "")]),
        ("python", f"def f():‸\n    pass  # TODO: {DEEP_LIST}\n", [("todo", f"pass  # TODO: {DEEP_LIST}", "block", f"TODO: {DEEP_LIST}")]),
        ("javascript", f"const a = {DEEP_LIST};\nfunction f() {{}}‸\n", [("empty_body", "", "block", "")]),
        ("typescript", f"{DEEP_CALL};‸\n", []),
    ],
    ids=["python-list", "python-list-then-ellipsis", "python-todo", "javascript-array", "typescript-calls"],
)
def test_deep_nesting_is_walked_without_recursion(language, marked, expected):
    assert targets(language, marked) == expected


@pytest.mark.parametrize(
    "language, text, placeholder, expected_prefix, expected_suffix",
    [
        ("python", "def f(a):\n    ...\n", "...", "def f(a):\n    ", "\n"),
        ("javascript", "function f() {}\n", "{}", "function f() {", "}\n"),
    ],
)
def test_a_target_becomes_a_fim_context(language, text, placeholder, expected_prefix, expected_suffix):
    tree = SyntaxTree(text, language)
    at = text.index(placeholder) + (1 if placeholder == "{}" else 0)
    (target,) = find_fill_targets(tree, at, at)
    ctx = build_context(
        tree, target.start, count_tokens=lambda s: len(s.split()), replace_end=target.end, scope=target.scope
    )
    assert (ctx.prefix, ctx.suffix, ctx.scope) == (expected_prefix, expected_suffix, "block")


def test_a_function_header_offers_its_placeholder_body():
    assert targets("python", "def f():‸\n    ...\n") == [("ellipsis", "...", "block", "")]
