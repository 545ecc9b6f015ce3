"""repair_json(): broken JSON in, valid JSON out with the user's data and formatting kept.
The model comes in as a fill callable; here it is a table of candidates per call."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgemma_ls.repair_json import (
    MAX_MODEL_CHARS,
    MAX_MODEL_VALUES,
    MAX_NESTING,
    MAX_SCHEMA_DEPTH,
    default_value,
    repair_json,
)
from dgemma_ls.textedits import apply_edits, minimal_edits


@pytest.mark.parametrize(
    "broken, expected, notes",
    [
        ('{"a": 1}', '{"a": 1}', []),
        ('{"a": 1 "b": 2}', '{"a": 1, "b": 2}', ["inserted missing commas"]),
        ('{"a": [1 2 3]}', '{"a": [1, 2, 3]}', ["inserted missing commas"]),
        ('{"a": 1,}', '{"a": 1}', ["removed trailing commas"]),
        ('{"tags": ["a", "b",],}', '{"tags": ["a", "b"]}', ["removed trailing commas"]),
        ("[1,, 2]", "[1, 2]", ["removed extra commas"]),
        ("[1, 2", "[1, 2]", ["closed unclosed brackets"]),
        ('{"a": [1, 2}', '{"a": [1, 2]}', ["closed unclosed brackets"]),
        ('{"a": 1}}', '{"a": 1}', ["removed unmatched closing brackets"]),
        ("[1, 2]]", "[1, 2]", ["removed unmatched closing brackets"]),
        ('{"a": "x}', '{"a": "x"}', ["closed unterminated strings"]),
        ('{"a": "line\n}', '{"a": "line"\n}', ["closed unterminated strings"]),
        ("{'a': 'it\\'s \"q\"'}", '{"a": "it\'s \\"q\\""}', ["replaced single quotes with double quotes"]),
        ("{a: 1, $b_2: 2}", '{"a": 1, "$b_2": 2}', ["quoted unquoted keys"]),
        ('{"a": True, "b": None, "c": False}', '{"a": true, "b": null, "c": false}',
         ["replaced True with true", "replaced None with null", "replaced False with false"]),
        ('{"a": hello}', '{"a": "hello"}', ["quoted bare words"]),
        ('{"a" 1}', '{"a": 1}', ["inserted missing colons"]),
        ('{"a": , "b": 2}', '{"a": null, "b": 2}', ["inserted null for missing values"]),
        ('{"a"}', '{"a": null}', ["inserted null for missing values"]),
        ('// settings\n{\n  "a": 1, // one\n  /* two */ "b": 2\n}\n', '{\n  "a": 1,\n  "b": 2\n}\n',
         ["removed comments (JSON has none)"]),
        ('{\n  "a": [1, 2,\n  "b": {"c": 3\n', '{\n  "a": [1, 2],\n  "b": {"c": 3\n  }\n}\n',
         ["closed unclosed brackets"]),
        ('{\n  "name": "x",\n  "list": [\n    1,\n    2\n', '{\n  "name": "x",\n  "list": [\n    1,\n    2\n  ]\n}\n',
         ["closed unclosed brackets"]),
        ('{"n": NaN, "m": -Infinity}', '{"n": NaN, "m": -Infinity}', []),
    ],
)
def test_deterministic_repairs(broken, expected, notes):
    result = repair_json(broken)
    assert (result.text, result.notes, result.valid, result.used_model) == (expected, notes, True, False)
    assert result.changed == (broken != expected)
    json.loads(result.text)


@pytest.mark.parametrize("hopeless", ["", "just words here", '{"a": 1} {"b": 2}'])
def test_unrepairable_text_is_reported_not_dropped(hopeless):
    result = repair_json(hopeless)
    assert not result.valid
    assert "could not make the JSON valid" in result.notes
    for word in hopeless.split():
        assert word.strip('{}":,') in result.text


class Model:
    """A fill callable answering each call from a list of candidate lists, recording what it
    was asked."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, prefix, suffix, max_tokens):
        self.calls.append((prefix, suffix))
        return self.answers.pop(0) if self.answers else []


@pytest.mark.parametrize(
    "broken, answers, expected, used_model",
    [
        # the model can do what rules cannot guess: a value after a key's colon, not null
        ('{"a": , "b": 2}', [["1"]], '{"a": 1, "b": 2}', True),
        ('{"a":}', [['"x",']], '{"a":"x"}', True),
        # only a plain literal: not an array, not more keys, not several lines
        ('{"a": , "b": 2}', [["[1, 2]", '"x", "c": 3', '"x"\n"y"']], '{"a": null, "b": 2}', False),
        # no candidates (no model loaded)
        ('{"a": , "b": 2}', [None], '{"a": null, "b": 2}', False),
    ],
)
def test_the_model_writes_only_values_missing_after_a_colon(broken, answers, expected, used_model):
    model = Model(*answers)
    result = repair_json(broken, fill=model)
    assert (result.text, result.used_model, result.valid) == (expected, used_model, True)


@pytest.mark.parametrize(
    "broken, expected",
    [
        # a trailing comma is removed, never filled (the model once wrote `"b","bification "`)
        ('["a", "b",]', '["a", "b"]'),
        ('{"a": 1 "b": 2}', '{"a": 1, "b": 2}'),
        ("[,0]", "[0]"),
        ('{"a": [1, 2,], "b": {"c": 3,}}', '{"a": [1, 2], "b": {"c": 3}}'),
        ('[1, 2', "[1, 2]"),
    ],
)
def test_the_model_is_not_asked_what_the_rules_decide(broken, expected):
    model = Model(['"bification ", ": "'], ["0"], ['"x"'])
    result = repair_json(broken, fill=model)
    assert (result.text, result.used_model, result.valid, model.calls) == (expected, False, True, [])


def test_the_model_sees_the_text_around_the_missing_value():
    model = Model(["1"])
    repair_json('{"a": , "b": 2}', fill=model)
    assert model.calls == [('{"a": ', ', "b": 2}')]


def test_valid_json_does_not_call_the_model():
    model = Model(["never"])
    assert repair_json('{"a": 1}', fill=model).changed is False
    assert model.calls == []


DEEP = f"nesting deeper than {MAX_NESTING} levels: not repaired"


@pytest.mark.parametrize(
    "text, expected, notes, valid",
    [
        # deeper than json.loads can judge: left as it is, with a note instead of a RecursionError
        ("[" * 10_000 + "]" * 10_000, None, [DEEP], False),
        ("[" * 10_000, None, [DEEP], False),
        ('{"a":' * 3000 + "1" + "}" * 2999, None, [DEEP], False),
        # brackets inside strings do not count
        ('["' + "[" * 10_000 + '"', '["' + "[" * 10_000 + '"]', ["closed unclosed brackets"], True),
        # as deep as the bound: repaired as usual
        ("[" * MAX_NESTING, "[" * MAX_NESTING + "]" * MAX_NESTING, ["closed unclosed brackets"], True),
        # a lone surrogate (valid in a JSON-RPC string, not in UTF-8): left alone, with a note
        ('{"a": "\ud800" "b": 1}', None, ["not valid Unicode (a lone surrogate at offset 7): not repaired"], False),
    ],
)
def test_what_is_left_as_it_is(text, expected, notes, valid):
    result = repair_json(text, fill=Model(["never"]))
    assert (result.text, result.notes, result.valid, result.used_model) == (expected or text, notes, valid, False)


def test_a_large_document_is_repaired_by_rules_alone():
    model = Model(['"a": 1,'])
    text = '{"a": 1 "b": 2, "pad": "' + "x" * MAX_MODEL_CHARS + '"}'
    result = repair_json(text, fill=model)
    assert (model.calls, result.valid, result.used_model) == ([], True, False)
    assert result.notes[0] == f"larger than {MAX_MODEL_CHARS // 1000} KB: repaired by rules alone, without the model"


def test_should_stop_ends_the_model_calls_and_the_rules_finish():
    model = Model(['"a": 1,'])
    result = repair_json('{"a": 1 "b": 2}', fill=model, should_stop=lambda: True)
    assert (model.calls, result.text, result.used_model) == ([], '{"a": 1, "b": 2}', False)


SCHEMA = {
    "type": "object",
    "required": ["name", "version", "private", "engines"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string", "default": "0.1.0"},
        "private": {"type": "boolean"},
        "engines": {"$ref": "#/definitions/engines"},
        "scripts": {"type": "object", "required": ["test"], "properties": {"test": {"type": "string"}}},
    },
    "definitions": {"engines": {"type": "object", "required": ["node"], "properties": {"node": {"enum": [">=20"]}}}},
}


@pytest.mark.parametrize(
    "document, answers, expected",
    [
        (
            '{\n  "name": "x"\n}\n',
            [],
            '{\n  "name": "x",\n  "version": "0.1.0",\n  "private": false,\n  "engines": {"node": ">=20"}\n}\n',
        ),
        ("{}", [], '{"name": "", "version": "0.1.0", "private": false, "engines": {"node": ">=20"}}'),
        # the model's values are used when they have the schema's type
        (
            '{"name": "a", "engines": {}, "scripts": {"build": "tsc"}}',
            # asked from the end of the document backwards: private, version, then test
            [["maybe", "true"], ['"2.0.0"'], ['"node --test"']],
            '{"name": "a", "engines": {"node": ">=20"}, "scripts": {"build": "tsc", "test": "node --test"}, '
            '"version": "2.0.0", "private": true}',
        ),
        # a broken document is repaired first, then completed
        ("{'name': 'a', 'version': '1', 'private': True, 'engines': {'node': '>=20'},}",
         [], '{"name": "a", "version": "1", "private": true, "engines": {"node": ">=20"}}'),
    ],
)
def test_schema_required_keys_are_added(document, answers, expected):
    result = repair_json(document, fill=Model(*answers) if answers else None, schema=SCHEMA)
    assert result.text == expected
    assert result.valid


def test_many_missing_keys_take_defaults_without_the_model():
    schema = {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}}
    model = Model(*[["7"]] * (MAX_MODEL_VALUES + 1))
    result = repair_json(json.dumps([{}] * (MAX_MODEL_VALUES + 1)), fill=model, schema=schema)
    assert json.loads(result.text) == [{"id": 0}] * (MAX_MODEL_VALUES + 1)
    assert model.calls == []
    assert f"{MAX_MODEL_VALUES + 1} required keys missing: more than the {MAX_MODEL_VALUES} values the model " \
        "writes in one repair, so all took the schema's defaults" in result.notes


def test_required_values_stop_asking_the_model_once_stopped():
    schema = {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}}
    model = Model(["7"], ["8"], ["9"])
    result = repair_json("[{}, {}, {}]", fill=model, schema=schema, should_stop=lambda: len(model.calls) == 1)
    assert (json.loads(result.text), len(model.calls)) == ([{"id": 0}, {"id": 0}, {"id": 7}], 1)


def test_a_schema_that_requires_itself_gets_a_bounded_default():
    schema = {"type": "object", "required": ["child"], "properties": {"child": {"$ref": "#"}}}
    value, depth = default_value(schema, schema), 0
    while value is not None:
        value, depth = value["child"], depth + 1
    assert depth == MAX_SCHEMA_DEPTH


def test_default_value():
    assert default_value({"type": ["null", "integer"]}, {}) == 0
    assert default_value({"const": "x"}, {}) == "x"
    assert default_value({"properties": {"a": {"type": "array"}}, "required": ["a"]}, {}) == {"a": []}


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('{"a": 1 "b": 2}', '{"a": 1, "b": 2}', [(7, 7, ",")]),
        ('{\n  "a": 1,\n}\n', '{\n  "a": 1\n}\n', [(10, 11, "")]),
        ("[1, 2", "[1, 2]", [(5, 5, "]")]),
        ("{'a': True}", '{"a": true}', [(1, 7, '"a": t')]),
        ("a\nb\nc\n", "a\nB\nc\nd\n", [(2, 3, "B"), (6, 6, "d\n")]),
        ("same", "same", []),
        ("", "x", [(0, 0, "x")]),
    ],
)
def test_minimal_edits(old, new, expected):
    edits = minimal_edits(old, new)
    assert apply_edits(old, edits) == new
    assert edits == expected


def test_minimal_edits_of_a_repair_that_touched_thousands_of_lines_is_one_edit():
    old = "".join(f"x{i} = [{i}, 'a']\n" for i in range(3000))
    new = old.replace("'a'", '"a"')
    edits = minimal_edits(old, new)
    assert apply_edits(old, edits) == new
    # one edit from the first change to the last, not 3,000 found by comparing every line pair
    assert [(start, end) for start, end, _ in edits] == [(old.index("'a'"), len(old) - len("]\n"))]


# -- invariants over generated documents (hypothesis) ---------------------------------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text("ab \"'\\:,{}[]é", max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abk", max_size=3), inner, max_size=4),
    max_leaves=12,
)
BREAKS = st.sampled_from(["delete", "comma", "colon", "quote", "bracket", "comment", "truncate"])


@settings(max_examples=200, deadline=None, database=None)
@given(value=VALUES, indent=st.sampled_from([None, 2]), edits=st.lists(st.tuples(BREAKS, st.floats(0, 1)), max_size=3))
def test_a_repair_parses_when_it_says_valid_and_never_raises(value, indent, edits):
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    broken = text
    for kind, where in edits:
        at = int(where * len(broken))
        insert = {"comma": ",", "colon": ":", "quote": '"', "bracket": "[", "comment": "// x\n"}.get(kind)
        if kind == "delete":
            broken = broken[:at] + broken[at + 1 :]
        elif kind == "truncate":
            broken = broken[:at]
        else:
            broken = broken[:at] + insert + broken[at:]
    model = Model(*[["1", '"x"', ""]] * 20)
    for fill in (None, model):
        result = repair_json(broken, fill=fill)
        if result.valid:
            json.loads(result.text)
        else:
            assert result.notes[-1] == "could not make the JSON valid"
        if broken == text:
            assert (result.text, result.changed, result.notes) == (text, False, [])
