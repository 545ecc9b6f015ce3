"""Settings parsing: every invalid value names its setting and falls back to the default."""

import pytest

from dgemma_ls.settings import Settings, parse_settings, section_of


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, Settings()),
        ({}, Settings()),
        (
            {"steps": 8, "entropyBound": 0.5, "maxMiddleTokens": 32},
            Settings(steps=8, entropy_bound=0.5, max_middle_tokens=32),
        ),
        ({"model": "/m", "device": "auto", "dtype": "bfloat16"}, Settings(model="/m", device="auto", dtype="bfloat16")),
        (
            {"enabledLanguages": ["python", "json"], "debounceMs": 0},
            Settings(enabled_languages=("python", "json"), debounce_ms=0),
        ),
        ({"prefixTokens": 64.0, "suffixTokens": 0}, Settings(prefix_tokens=64, suffix_tokens=0)),
        ({"model": "", "steps": None}, Settings()),
        ({"compile": True}, Settings(compile=True)),
    ],
)
def test_valid_settings_parse_without_warnings(raw, expected):
    assert parse_settings(raw) == (expected, [])


@pytest.mark.parametrize(
    "raw, setting",
    [
        ({"steps": "many"}, "dgemma.steps"),
        ({"steps": 0}, "dgemma.steps"),
        ({"steps": True}, "dgemma.steps"),
        ({"device": "tpu"}, "dgemma.device"),
        ({"dtype": "int4"}, "dgemma.dtype"),
        ({"entropyBound": -1}, "dgemma.entropyBound"),
        ({"maxMiddleTokens": 2.5}, "dgemma.maxMiddleTokens"),
        ({"enabledLanguages": "python"}, "dgemma.enabledLanguages"),
        ({"debounceMs": -5}, "dgemma.debounceMs"),
        ({"model": 3}, "dgemma.model"),
        ({"compile": "yes"}, "dgemma.compile"),
        ({"compile": 1}, "dgemma.compile"),
        ({"bogus": 1}, "dgemma.bogus"),
    ],
)
def test_invalid_value_warns_by_name_and_keeps_the_default(raw, setting):
    settings, warnings = parse_settings(raw)
    assert settings == Settings()
    assert len(warnings) == 1 and warnings[0].startswith(setting + ":")


def test_one_bad_value_keeps_the_good_ones():
    settings, warnings = parse_settings({"steps": -1, "maxMiddleTokens": 16})
    assert settings == Settings(max_middle_tokens=16)
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "raw, section",
    [
        ({"dgemma": {"steps": 4}}, {"steps": 4}),
        ({"steps": 4}, {"steps": 4}),
        ({"python": {"x": 1}}, None),
        (None, None),
        ([1], None),
    ],
)
def test_section_of_accepts_wrapped_or_bare_sections(raw, section):
    assert section_of(raw) == section


def test_engine_key_changes_only_with_model_device_dtype_compile():
    base = Settings()
    assert Settings(steps=3).engine_key() == base.engine_key()
    assert Settings(dtype="float32").engine_key() != base.engine_key()
    assert Settings(compile=False).engine_key() != base.engine_key()


def test_the_vscode_extension_sends_only_settings_the_server_reads():
    """editors/vscode: every contributed dgemma.* setting (but the extension's own two) is a server
    setting, and the extension forwards exactly those."""
    import json
    import re
    from pathlib import Path

    from dgemma_ls.settings import _FIELDS

    root = Path(__file__).parent.parent / "editors/vscode"
    contributed = json.loads((root / "package.json").read_text())["contributes"]["configuration"]["properties"]
    keys = {k.removeprefix("dgemma.") for k in contributed} - {"serverPath", "serverArgs"}
    sent = set(re.findall(r'"(\w+)"', re.search(r"SERVER_KEYS = \[(.*?)\]", (root / "extension.js").read_text())[1]))
    assert keys <= set(_FIELDS) and sent == keys
