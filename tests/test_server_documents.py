"""Document positions: LSP (line, character) in each position encoding <-> str offsets, and
incremental edits that keep the text and its SyntaxTree in step."""

import pytest

from dgemma_ls.documents import MAX_MODEL_CHARS, Document, language_of

TEXT = "a = 1\r\nb = 'é😀x'\rc\n\nlast"


@pytest.mark.parametrize(
    "encoding, position, offset",
    [
        ("utf-16", (0, 0), 0),
        ("utf-16", (0, 5), 5),
        ("utf-16", (0, 99), 5),  # past the end of a line clamps to the line
        ("utf-16", (1, 0), 7),
        ("utf-16", (1, 6), 13),  # after é: one unit
        ("utf-16", (1, 8), 14),  # after 😀: two units
        ("utf-8", (1, 7), 13),  # é is two bytes
        ("utf-8", (1, 11), 14),  # 😀 is four bytes
        ("utf-32", (1, 7), 14),
        ("utf-16", (2, 1), 18),  # a lone \r ends line 1
        ("utf-16", (4, 4), 24),
        ("utf-16", (9, 0), 24),  # past the last line: the end
    ],
)
def test_offset_at_and_back(encoding, position, offset):
    doc = Document("file:///t.py", "python", 1, TEXT, encoding)
    assert doc.offset_at(*position) == offset
    if position[0] < 5 and position[1] < 99:
        assert doc.position_at(offset) == position


@pytest.mark.parametrize(
    "edits, expected",
    [
        ([((0, 4), (0, 5), "42")], "a = 42\nb = 2\n"),
        ([((1, 0), (1, 0), "# hi\n")], "a = 1\n# hi\nb = 2\n"),
        ([((0, 5), (1, 5), "")], "a = 1\n"),
        ([((2, 0), (2, 0), "c = 3"), ((2, 5), (2, 5), "\n")], "a = 1\nb = 2\nc = 3\n"),
    ],
)
def test_incremental_edits_keep_text_and_tree_in_step(edits, expected):
    doc = Document("file:///t.py", "python", 1, "a = 1\nb = 2\n")
    for start, end, new_text in edits:
        doc.apply_change(start, end, new_text)
    assert doc.text == expected
    assert doc.tree.text == expected
    assert doc.tree.error_count() == 0


def test_huge_and_binary_documents_block_the_model_with_a_reason():
    huge = Document("file:///big.txt", "plaintext", 1, "x" * (MAX_MODEL_CHARS + 1))
    assert "too large" in huge.model_block_reason() and huge.tree is None
    binary = Document("file:///b.py", "python", 1, "a\x00b")
    assert "binary" in binary.model_block_reason()
    binary.apply_change((0, 1), (0, 2), "")
    assert binary.model_block_reason() is None and binary.tree.text == "ab"


@pytest.mark.parametrize(
    "language_id, uri, language, overridden",
    [
        ("python", "file:///a/broken.json", "json", True),  # Eglot < 1.15: one languageId for all
        ("python", "file:///a/notes.md", "markdown", True),
        ("json", "file:///a/b.json", "json", False),
        ("jsonc", "file:///a/settings.json", "json", False),
        ("typescriptreact", "file:///a/view.tsx", "tsx", False),
        ("plaintext", "file:///a/notes.md", "text", False),  # the user chose plain text
        ("python", "file:///a/script", "python", False),  # no extension: the languageId decides
        ("rust", "file:///a/lib.rs", "text", False),
    ],
)
def test_the_file_extension_wins_over_a_contradicting_language_id(language_id, uri, language, overridden):
    chosen, note = language_of(language_id, uri)
    assert chosen == language and (note is not None) == overridden


def test_an_edit_never_changes_a_tree_already_handed_out():
    """The model thread builds contexts from the tree of the version it was asked about."""
    doc = Document("file:///t.py", "python", 1, "x = 1\n")
    handed_out = doc.tree
    doc.apply_change((0, 4), (0, 5), "[1, 2]")
    assert handed_out.text == "x = 1\n" and handed_out.tree.root_node.end_byte == len("x = 1\n")
    assert doc.tree.text == "x = [1, 2]\n" and doc.tree.tree.root_node.end_byte == len("x = [1, 2]\n")
