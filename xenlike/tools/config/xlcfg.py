"""The xl.cfg syntax: settings, values, comments (xl.cfg(5) "SYNTAX").

The grammar is libxlu's (``tools/libs/util/libxlu_cfg_l.l``, ``libxlu_cfg_y.y``,
``libxlu_cfg.c``)::

    file       := { [assignment] (NEWLINE | ";") } [assignment]
    assignment := KEY "=" value | KEY "+=" value
    value      := STRING | NUMBER | "[" {NEWLINE} [items] "]"
    items      := value {NEWLINE} { "," {NEWLINE} value {NEWLINE} } ["," {NEWLINE}]

* ``KEY`` is a lowercase letter then lowercase letters, digits and ``_``.
* ``STRING`` is "double" or 'single' quoted on one line, with the escapes
  ``\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v``, ``\\xHH`` and ``\\ooo`` (octal).
* ``NUMBER`` is decimal, octal with a leading ``0`` or hexadecimal with ``0x``;
  there is no sign. A BOOLEAN is a NUMBER (0 is false).
* Lists nest, may be empty, may end with a comma and may span lines.
* ``#`` starts a comment that runs to the end of the line; spaces and tabs
  separate tokens.
* A key set twice keeps its last value. ``KEY += VALUE`` appends a list to
  the list, or a string to the string, set earlier under that key (or sets
  it when there is none); ``+=`` on numbers is an error, as in xl.

:func:`parse_xlcfg` returns a :class:`Settings`: an ordered dict of Python
values (``str``, ``int``, nested ``list``) that also records where each key
was set. :func:`apply_overrides` gives ``xl create CFG KEY=VALUE...``
semantics: each argument is more config text read after the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "Settings",
    "apply_overrides",
    "format_value",
    "parse_override",
    "parse_xlcfg",
]


class ConfigError(ValueError):
    """A configuration that cannot be used.

    The message is meant for the user as it is: it names the file (and line,
    when known), the key, the value and what was expected instead.
    """


class Settings(dict):
    """Settings in the order they were first set, with where each was set.

    ``locations[key]`` is a phrase such as ``"web.cfg line 3"`` or
    ``"the command line"``; :meth:`where` falls back to ``source``.
    """

    def __init__(
        self,
        source: str = "<config>",
        items: Mapping[str, Any] | None = None,
        locations: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(items or {})
        self.source = source
        self.locations: dict[str, str] = dict(locations or {})

    def where(self, key: str) -> str:
        """Where ``key`` was set: ``"<file> line <n>"``, or the source."""
        return self.locations.get(key, self.source)

    def copy(self) -> Settings:
        """A shallow copy that keeps the source and the locations."""
        return Settings(self.source, self, self.locations)


# -- rendering values in messages ------------------------------------------------------------

_RENDER_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


def format_value(value: Any) -> str:
    """``value`` written as xl.cfg writes it, for messages: ``"lots"``, ``64``, ``["a", 1]``.

    Values that xl.cfg cannot hold (booleans, floats, tables from TOML files)
    are written as TOML writes them.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _RENDER_ESCAPES:
                out.append(_RENDER_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\x{ord(ch):02x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


# -- the lexer -------------------------------------------------------------------------------

_IDENT = re.compile(r"[a-z][a-z0-9_]*")
# Wider than a valid number on purpose: "64M" or "1.5" is then one token, reported whole.
_NUMBER_WORD = re.compile(r"[0-9][0-9A-Za-z_.]*")
_SIMPLE_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")
_OCTAL = re.compile(r"[0-7]{1,3}")
_MAX_DEPTH = 64


@dataclass(frozen=True)
class _Token:
    kind: str  # "key", "number", "string", "op", "newline", "eof"
    text: str
    value: Any
    line: int
    column: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "the end of the text"
        if self.kind == "newline":
            return "the end of the line"
        return f"'{self.text}'" if self.kind != "string" else self.text


def _parse_number(text: str) -> int | None:
    """``strtol(text, NULL, 0)`` over the whole text, without sign or spaces (libxlu_cfg.c)."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"0[0-7]*", text):
        return int(text, 8)
    if re.fullmatch(r"[1-9][0-9]*", text):
        return int(text)
    return None


class _Lexer:
    def __init__(self, text: str, source: str, one_line: bool = False) -> None:
        self.text = text
        self.source = source
        self.one_line = one_line and "\n" not in text

    def error(self, line: int, column: int, message: str) -> ConfigError:
        if self.one_line:
            return ConfigError(f"{self.source} column {column}: {message}")
        return ConfigError(f"{self.source} line {line} column {column}: {message}")

    def tokens(self) -> list[_Token]:
        text = self.text
        out: list[_Token] = []
        i, line, line_start = 0, 1, 0
        while i < len(text):
            ch = text[i]
            column = i - line_start + 1
            if ch in " \t\r":
                i += 1
            elif ch == "#":
                end = text.find("\n", i)
                i = len(text) if end < 0 else end
            elif ch == "\n":
                out.append(_Token("newline", "\n", None, line, column))
                i += 1
                line += 1
                line_start = i
            elif text.startswith("+=", i):
                out.append(_Token("op", "+=", None, line, column))
                i += 2
            elif ch in "=;,[]":
                out.append(_Token("op", ch, None, line, column))
                i += 1
            elif ch in "\"'":
                i = self._string(i, line, column, out)
            elif (number_word := _NUMBER_WORD.match(text, i)) is not None:  # ch is a digit
                word = number_word.group()
                number = _parse_number(word)
                if number is None:
                    raise self.error(
                        line,
                        column,
                        f"expected a number (decimal, 0 then octal digits, or 0x then "
                        f"hex digits), found '{word}'; write \"{word}\" if it is a string",
                    )
                out.append(_Token("number", word, number, line, column))
                i += len(word)
            elif (ident := _IDENT.match(text, i)) is not None:  # ch is a lowercase letter
                word = ident.group()
                out.append(_Token("key", word, word, line, column))
                i += len(word)
            else:
                raise self.error(
                    line,
                    column,
                    f"unexpected character {ch!r}: expected a setting name (lowercase "
                    "letters, digits and '_'), a value, '=', ';', ',', '[', ']' or '#'",
                )
        out.append(_Token("eof", "", None, line, len(text) - line_start + 1))
        return out

    def _string(self, start: int, line: int, column: int, out: list[_Token]) -> int:
        text, quote = self.text, self.text[start]
        i = start + 1
        chars: list[str] = []
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error(line, column, f"unterminated string: expected the closing {quote} on the same line")
            ch = text[i]
            if ch == quote:
                break
            if ch != "\\":
                chars.append(ch)
                i += 1
                continue
            esc_column = i - start + column
            nxt = text[i + 1] if i + 1 < len(text) else "\n"
            if nxt in _SIMPLE_ESCAPES:
                chars.append(_SIMPLE_ESCAPES[nxt])
                i += 2
            elif nxt == "x":
                digits = _HEX2.match(text, i + 2)
                if digits is None:
                    raise self.error(line, esc_column, "expected two hex digits after \\x in a string")
                chars.append(chr(int(digits.group(), 16)))
                i += 2 + 2
            elif (octal_digits := _OCTAL.match(text, i + 1)) is not None:  # nxt is an octal digit
                octal = octal_digits.group()
                if int(octal, 8) > 0o377:
                    raise self.error(line, esc_column, f"octal escape \\{octal} is above \\377")
                chars.append(chr(int(octal, 8)))
                i += 1 + len(octal)
            elif nxt == "\n":
                raise self.error(line, column, f"unterminated string: expected the closing {quote} on the same line")
            else:
                raise self.error(
                    line,
                    esc_column,
                    f"unknown escape \\{nxt} in a string: expected one of "
                    "\\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH \\ooo",
                )
        out.append(_Token("string", text[start : i + 1], "".join(chars), line, column))
        return i + 1


# -- the parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, source: str, into: Settings, location: str | None = None) -> None:
        self.lexer = _Lexer(text, source, one_line=location is not None)
        self.tokens = self.lexer.tokens()
        self.pos = 0
        self.source = source
        self.location = location
        self.settings = into

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def fail(self, token: _Token, expected: str, hint: str = "") -> ConfigError:
        return self.lexer.error(token.line, token.column, f"expected {expected}, found {token.describe()}{hint}")

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def parse(self) -> Settings:
        while True:
            token = self.peek()
            if token.kind == "eof":
                return self.settings
            if token.kind == "newline" or token.text == ";":
                self.take()
                continue
            if token.kind != "key":
                raise self.fail(token, "a setting (KEY = VALUE)")
            self.assignment()
            end = self.peek()
            if end.kind not in ("newline", "eof") and end.text != ";":
                raise self.fail(end, "';' or a new line after the value")

    def assignment(self) -> None:
        key = self.take()
        op = self.take()
        if op.text not in ("=", "+="):
            raise self.fail(op, f"'=' after {key.text}")
        start = self.peek()
        value = self.value(0)
        if op.text == "+=" and key.text in self.settings:
            value = self.append(key.text, self.settings[key.text], value, start)
        self.settings[key.text] = value
        self.settings.locations[key.text] = self.location or f"{self.source} line {key.line}"

    def value(self, depth: int) -> Any:
        token = self.take()
        if token.kind in ("string", "number"):
            return token.value
        if token.text == "[":
            if depth >= _MAX_DEPTH:
                raise self.lexer.error(token.line, token.column, f"lists nested more than {_MAX_DEPTH} deep")
            return self.list_items(token, depth + 1)
        if token.kind == "key":
            raise self.fail(
                token, 'a value: a "string", a number or a [list]', f' (strings are quoted: "{token.text}")'
            )
        raise self.fail(token, 'a value: a "string", a number or a [list]')

    def list_items(self, opening: _Token, depth: int) -> list[Any]:
        items: list[Any] = []
        self.skip_newlines()
        if self.peek().text == "]":
            self.take()
            return items
        while True:
            items.append(self.value(depth))
            self.skip_newlines()
            token = self.take()
            if token.text == "]":
                return items
            if token.text != ",":
                raise self.fail(token, f"',' or ']' in the list opened at line {opening.line} column {opening.column}")
            self.skip_newlines()
            if self.peek().text == "]":
                self.take()
                return items

    def append(self, key: str, old: Any, new: Any, at: _Token) -> Any:
        if isinstance(old, list) and isinstance(new, list):
            return old + new
        if isinstance(old, str) and isinstance(new, str):
            return old + new
        if isinstance(old, int) or isinstance(new, int):
            raise self.lexer.error(at.line, at.column, f"can't use += with numbers ({key} = {format_value(old)})")
        raise self.lexer.error(
            at.line, at.column, f'can\'t add [list] to "string" or vice versa ({key} = {format_value(old)})'
        )


def parse_xlcfg(text: str, source: str = "<config>") -> Settings:
    """Parse xl.cfg text (xl.cfg(5) "SYNTAX", libxlu_cfg_y.y) into :class:`Settings`.

    Numbers become ``int``, strings ``str`` (escapes decoded), lists ``list``.
    Raises :class:`ConfigError` naming ``source``, the line, the column, what
    was expected and what was found. Never raises anything else for a ``str``.
    """
    return _Parser(text, source, Settings(source)).parse()


_BARE = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(\+?=)(.*)", re.DOTALL)


def apply_overrides(
    settings: Mapping[str, Any], overrides: Iterable[str], source: str = "the command line"
) -> Settings:
    """``settings`` with the ``KEY=VALUE`` arguments of ``xl create CFG KEY=VALUE...`` applied.

    As in xl(1) ``create``, each argument is config text read after the file:
    it may hold several settings separated by ``;`` and use ``+=``. One
    addition: an argument ``KEY=REST`` whose REST is not valid xl.cfg syntax
    takes REST, stripped, as a string (``name=web``, ``cpus=0-3,^1``), which
    is what a shell user means. ``settings`` is not modified.
    """
    result = settings.copy() if isinstance(settings, Settings) else Settings(source, settings)
    for text in overrides:
        attempt = result.copy()
        try:
            result = _Parser(text, f"{text!r} on {source}", attempt, location=source).parse()
            continue
        except ConfigError:
            bare = _BARE.fullmatch(text)
            if bare is None or not bare.group(3).strip():
                raise
        key, op, raw = bare.group(1), bare.group(2), bare.group(3).strip()
        value: Any = raw
        if op == "+=" and key in result:
            old = result[key]
            if not isinstance(old, str):
                raise ConfigError(f'{source}: can\'t add "string" to {key} = {format_value(old)}')
            value = old + raw
        result[key] = value
        result.locations[key] = source
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """One ``KEY=VALUE`` from the command line, parsed with the xl.cfg value grammar.

    A value that is not valid xl.cfg syntax is taken as a string, so
    ``memory=64`` gives ``("memory", 64)`` and ``name=web`` gives
    ``("name", "web")``. Raises :class:`ConfigError` for anything that is not
    exactly one setting.
    """
    result = apply_overrides(Settings("the command line"), [text])
    if len(result) != 1:
        raise ConfigError(f"{text!r} is not one setting: write KEY=VALUE, e.g. memory=64")
    key = next(iter(result))
    return key, result[key]


def read_config_text(path: Path | str, what: str) -> str:
    """A config file's text; ConfigError naming the file if it cannot be read as UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
