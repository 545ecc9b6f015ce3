"""Language detection, incremental re-parsing and error counting of SyntaxTree."""

import pytest

from dgemma_ls.syntax import SyntaxTree, language_for


@pytest.mark.parametrize(
    "language_id, uri, expected",
    [
        ("python", "file:///a/b.txt", "python"),
        ("javascriptreact", "file:///a/b.jsx", "javascript"),
        ("typescript", "file:///a/b.ts", "typescript"),
        ("typescriptreact", "file:///a/b.tsx", "tsx"),
        ("jsonc", "file:///a/tsconfig.json", "json"),
        ("markdown", "untitled:Untitled-1", "markdown"),
        ("", "file:///a/b.pyi", "python"),
        ("unknown", "file:///a/b.MJS", "javascript"),
        ("", "file:///a/b.mts?query#frag", "typescript"),
        ("", "file:///a/README.markdown", "markdown"),
        ("rust", "file:///a/b.rs", "text"),
        ("plaintext", "file:///a/b.json", "text"),
        ("", "file:///a/Makefile", "text"),
    ],
)
def test_language_for(language_id, uri, expected):
    assert language_for(language_id, uri) == expected


@pytest.mark.parametrize(
    "language, text, start, end, new_text, expected_errors",
    [
        ("python", "def f():\n    return 1\n", 21, 21, " +", 1),
        ("python", "s = 'é中'\nx = (1\n", 15, 15, ")", 0),
        ("python", "s = '😀'\nx = 1\n", 5, 6, "ok", 0),
        ("javascript", "const a = [1, 2];\n", 15, 16, "", 1),
        ("typescript", "let x: number = 1;\n", 7, 13, "string", 0),
        ("tsx", "const e = <div>hi</div>;\n", 16, 17, "", 0),
        ("json", '{"ключ": 1}\n', 10, 10, ",", 1),
        ("json", '{"a": [1, 2}\n', 11, 11, "]", 0),
        ("markdown", "# Title\n\n| a | b |\n", 9, 9, "text ", 0),
        ("text", "héllo\n", 1, 2, "e", 0),
    ],
)
def test_apply_edit_matches_a_fresh_parse(language, text, start, end, new_text, expected_errors):
    tree = SyntaxTree(text, language)
    tree.apply_edit(start, end, new_text)
    fresh = SyntaxTree(text[:start] + new_text + text[end:], language)
    assert tree.text == fresh.text
    if fresh.tree is None:
        assert tree.tree is None
    else:
        assert str(tree.tree.root_node) == str(fresh.tree.root_node)
    assert tree.error_count() == expected_errors


def test_apply_edit_rejects_a_range_outside_the_document():
    tree = SyntaxTree("x = 1\n", "python")
    with pytest.raises(ValueError):
        tree.apply_edit(3, 99, "")


@pytest.mark.parametrize(
    "language, text, start, end, expected",
    [
        ("python", "x = (1\ny = 2\nz = [3\n", None, None, 2),
        ("python", "x = 1\ny = 2 +\nz = 3\n", 0, 5, 0),
        ("python", "x = 1\ny = 2 +\nz = 3\n", 6, 13, 1),
        ("javascript", "f(1;\n", None, None, 1),
        ("json", '{"a": 1 "b": 2}', None, None, 1),
        ("json", '[1, 2', None, None, 1),
        ("markdown", "# ok\n", None, None, 0),
        ("text", "anything ((( goes", None, None, 0),
    ],
)
def test_error_count(language, text, start, end, expected):
    assert SyntaxTree(text, language).error_count(start, end) == expected


@pytest.mark.parametrize(
    "language, text, offset, expected",
    [
        ("python", "é = foo(bar)\n", 9, "identifier"),
        ("javascript", "let s = 'é';", 9, "string_fragment"),
        ("json", '{"中": true}', 7, "true"),
    ],
)
def test_node_at_uses_str_offsets(language, text, offset, expected):
    assert SyntaxTree(text, language).node_at(offset).type == expected


def test_node_at_is_none_for_plain_text():
    assert SyntaxTree("abc", "text").node_at(1) is None
