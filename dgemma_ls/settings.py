"""The server's options: one defaulted dataclass and the parser that validates client JSON.

Knows the `dgemma` settings section (camelCase keys) and nothing about LSP or the model.
An invalid value never fails: it yields a warning naming the setting and the default is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SECTION = "dgemma"
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("none", "int8", "int4", "fp8")  # engine.quantize.MODES
BACKENDS = ("local", "dgemma", "openai")  # dgemma_ls.backends


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # checkpoint directory; None -> the --model flag, else the embedded model
    device: str = "cpu"
    dtype: str = "auto"
    quantize: str | None = None  # weight-only quantization at load (engine.quantize); None -> --quantize, else none
    compile: bool = True  # torch.compile the denoising step in the background after a load (Engine.compile)
    steps: int | None = None  # denoising steps per block; None -> the engine's default
    entropy_bound: float | None = None
    max_middle_tokens: int = 48
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    enabled_languages: tuple[str, ...] = ()  # empty -> every language
    debounce_ms: int = 75
    threads: int | None = None  # torch CPU threads of the server process; None -> --threads, else torch's own
    # where infills run (dgemma_ls/backends.py, docs/serve.md); None -> the dgemma-ls flag, else the default
    backend: str | None = None  # local (the in-process engine), dgemma (a dgemma serve URL) or openai
    backend_url: str | None = None
    backend_model: str | None = None
    backend_api_key_env: str | None = None  # the NAME of an environment variable holding the key
    backend_timeout_ms: int | None = None
    request_timeout_ms: int = 60_000  # an interactive model job past this is dropped (ghost text stays empty)

    def engine_key(self) -> tuple:
        """What a model load depends on: a change here means a reload."""
        return (self.model, self.device, self.dtype, self.quantize, self.compile, self.backend, self.backend_url,
                self.backend_model, self.backend_api_key_env, self.backend_timeout_ms)

    def language_enabled(self, language_id: str) -> bool:
        return not self.enabled_languages or language_id in self.enabled_languages


class _Invalid(ValueError):
    pass


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid("expected a path string")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _optional_choice(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    parse_choice = _choice(choices)
    return lambda value: None if value is None or value == "" else parse_choice(value)


def _int_in(low: int, high: int, optional: bool = False) -> Callable[[Any], int | None]:
    def parse(value: Any) -> int | None:
        if value is None and optional:
            return None
        # bool is an int subclass; `true` is never a meaningful count
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise _Invalid(f"expected an integer in [{low}, {high}]")
        if not low <= value <= high:
            raise _Invalid(f"expected an integer in [{low}, {high}]")
        return int(value)

    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _optional_positive_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _Invalid("expected a positive number")
    return float(value)


def _languages(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _Invalid("expected a list of language ids")
    return tuple(value)


# camelCase key -> (dataclass field, parser)
_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model": ("model", _optional_str),
    "device": ("device", _choice(DEVICES)),
    "dtype": ("dtype", _choice(DTYPES)),
    "quantize": ("quantize", _optional_choice(QUANTIZE)),
    "compile": ("compile", _bool),
    "steps": ("steps", _int_in(1, 1024, optional=True)),
    "entropyBound": ("entropy_bound", _optional_positive_float),
    "maxMiddleTokens": ("max_middle_tokens", _int_in(1, 1024)),
    "prefixTokens": ("prefix_tokens", _int_in(16, 32768)),
    "suffixTokens": ("suffix_tokens", _int_in(0, 32768)),
    "enabledLanguages": ("enabled_languages", _languages),
    "debounceMs": ("debounce_ms", _int_in(0, 5000)),
    "threads": ("threads", _int_in(1, 256, optional=True)),
    "backend": ("backend", _optional_choice(BACKENDS)),
    "backendUrl": ("backend_url", _optional_str),
    "backendModel": ("backend_model", _optional_str),
    "backendApiKeyEnv": ("backend_api_key_env", _optional_str),
    "backendTimeoutMs": ("backend_timeout_ms", _int_in(100, 600_000, optional=True)),
    "requestTimeoutMs": ("request_timeout_ms", _int_in(100, 3_600_000)),
}


def section_of(raw: Any) -> Mapping[str, Any] | None:
    """The `dgemma` section of a settings payload, accepting `{dgemma: {...}}` or the bare section."""
    if not isinstance(raw, Mapping):
        return None
    inner = raw.get(SECTION)
    if isinstance(inner, Mapping):
        return inner
    return raw if any(key in _FIELDS for key in raw) else None


def parse_settings(raw: Any) -> tuple[Settings, list[str]]:
    """Validate a `dgemma` section; returns the settings and one warning per rejected value."""
    defaults = Settings()
    if raw is None:
        return defaults, []
    if not isinstance(raw, Mapping):
        return defaults, [f"{SECTION}: expected an object, got {type(raw).__name__}; using defaults"]
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key not in _FIELDS:
            warnings.append(f"{SECTION}.{key}: unknown setting, ignored")
            continue
        name, parse = _FIELDS[key]
        try:
            values[name] = parse(value)
        except _Invalid as reason:
            default = getattr(defaults, name)
            warnings.append(f"{SECTION}.{key}: {reason}, got {value!r}; using the default ({default!r})")
    return dataclasses.replace(defaults, **values), warnings
