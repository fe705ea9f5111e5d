"""The xl.cfg syntax (xl.cfg(5), ``tools/libs/util/libxlu_cfg_l.l`` and ``_y.y``).

A config file is ``KEY = VALUE`` settings, separated by newlines or ``;``, with
``#`` comments. A value is a "double" or 'single' quoted string (C escapes), a
number (decimal, ``0x`` hex, ``0`` octal), or a ``[list, of, values]`` (nestable,
trailing comma allowed, newlines allowed inside). ``KEY += VALUE`` appends to a
list or string set earlier, as libxlu does.

:func:`parse_xlcfg` returns the settings as an ordered dict of Python values
(str, int, list) plus the line of each key, for messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ConfigError", "ParsedConfig", "parse_xlcfg", "parse_override"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, key, value and the fix."""


@dataclass
class ParsedConfig:
    settings: dict[str, Any]
    lines: dict[str, int]
    source: str


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "'": "'", '"': '"'}
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<append>\+=)
  | (?P<punct>[=;\[\],])
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>0[xX][0-9a-fA-F]+|[0-9]+)(?![A-Za-z0-9_])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.\-]*)
    """,
    re.VERBOSE,
)


@dataclass
class _Token:
    kind: str
    text: str
    line: int
    column: int


def _unescape(body: str, where: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :]).group(0)  # type: ignore[union-attr]
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1 :]).group(0)  # type: ignore[union-attr]
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        else:
            raise ConfigError(f"{where}: unknown escape \\{nxt} in a string")
    return "".join(out)


def _number(text: str) -> int:
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if len(text) > 1 and text[0] == "0":
        return int(text, 8)
    return int(text)


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        column = pos - line_start + 1
        if match is None:
            raise ConfigError(f"{source} line {line} column {column}: unexpected character {text[pos]!r}")
        kind = match.lastgroup
        value = match.group(0)
        if kind == "newline":
            tokens.append(_Token("newline", value, line, column))
            line += 1
            line_start = match.end()
        elif kind not in ("ws", "comment"):
            tokens.append(_Token(kind, value, line, column))  # type: ignore[arg-type]
        pos = match.end()
    tokens.append(_Token("eof", "", line, pos - line_start + 1))
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def fail(self, token: _Token, expected: str) -> ConfigError:
        found = "end of file" if token.kind == "eof" else "end of line" if token.kind == "newline" else repr(token.text)
        return ConfigError(f"{self.source} line {token.line} column {token.column}: expected {expected}, found {found}")

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def value(self, bare_words: bool = False) -> Any:
        token = self.take()
        if token.kind == "string":
            return _unescape(token.text[1:-1], f"{self.source} line {token.line}")
        if token.kind == "number":
            return _number(token.text)
        if token.text == "[":
            items = []
            self.skip_newlines()
            while self.peek().text != "]":
                items.append(self.value())
                self.skip_newlines()
                if self.peek().text == ",":
                    self.take()
                    self.skip_newlines()
                elif self.peek().text != "]":
                    raise self.fail(self.peek(), "',' or ']' in a list")
            self.take()
            return items
        if bare_words and token.kind in ("ident", "number"):
            return token.text
        if token.kind == "ident":
            raise self.fail(token, 'a value (strings are quoted: "like this")')
        raise self.fail(token, "a value: a quoted string, a number or a [list]")

    def settings(self) -> ParsedConfig:
        settings: dict[str, Any] = {}
        lines: dict[str, int] = {}
        while True:
            self.skip_newlines()
            token = self.peek()
            if token.kind == "eof":
                return ParsedConfig(settings, lines, self.source)
            if token.text == ";":
                self.take()
                continue
            key = self.take()
            if key.kind != "ident":
                raise self.fail(key, "a setting name")
            op = self.take()
            if op.text not in ("=", "+="):
                raise self.fail(op, f"'=' after {key.text}")
            value = self.value()
            if op.text == "+=":
                value = _append(settings.get(key.text), value, key, self.source)
            settings[key.text] = value
            lines[key.text] = key.line
            end = self.peek()
            if end.kind not in ("newline", "eof") and end.text != ";":
                raise self.fail(end, f"the end of the {key.text} setting (a newline or ';')")


def _append(old: Any, value: Any, key: _Token, source: str) -> Any:
    if old is None:
        return value
    if isinstance(old, list):
        return old + (value if isinstance(value, list) else [value])
    if isinstance(old, str) and isinstance(value, str):
        return old + value
    raise ConfigError(f"{source} line {key.line}: cannot append {value!r} to {key.text} = {old!r}")


def parse_xlcfg(text: str, source: str = "<config>") -> ParsedConfig:
    """Parse xl.cfg text; ConfigError names the line and column of any syntax error."""
    return _Parser(_tokenize(text, source), source).settings()


def parse_override(text: str) -> tuple[str, Any]:
    """A ``key=value`` from the command line (``xenlike create CFG memory=64``).

    The value has the file's grammar; anything that is not a quoted string, a
    number or a list is taken as a plain string (``name=web``), which is what a
    shell user means. Returns ``(key, value)``.
    """
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", key):
        raise ConfigError(f"{text!r} is not a setting: write KEY=VALUE, e.g. memory=64")
    source = f"the setting {text!r}"
    try:
        parser = _Parser(_tokenize(raw, source), source)
        if parser.peek().kind != "eof":
            value = parser.value()
            if parser.peek().kind == "eof":
                return key, value
    except ConfigError:
        pass
    return key, raw
