"""Protocol-buffer text format (``pipeline.config``) read into plain Python data, without a schema.

A message becomes a ``dict`` mapping each field name to the *list* of its values in file order
(any field may repeat in the text format; a singular field simply has one value). Values are:

- a nested message: another such ``dict``;
- numbers: ``int`` (decimal, ``0x`` hex, ``0`` octal) or ``float`` (``.08``, ``8e-2``, ``1.0f``,
  ``inf``, ``-nan``); a float written as the float32 it is (protobuf writes the zoo's files so:
  ``0.8999999761581421``) reads as the shortest decimal with that float32 (``0.9``), since the
  API's fields are float32 and ``0.9`` is what the author wrote;
- ``True`` / ``False`` for the identifiers ``true`` / ``True`` / ``false`` / ``False``;
- ``str`` for quoted strings (single or double quotes, C escapes, adjacent strings joined) and
  for other identifiers (enum values such as ``RELU_6`` or ``V2``).

Every form the text format allows is read: ``field: value``, ``field { ... }``,
``field: { ... }``, ``field < ... >``, lists ``field: [a, b]`` and ``field [{...}, {...}]``, an
optional ``,`` or ``;`` after each field, ``#`` comments, and extension or ``Any`` field names in
brackets (``[pkg.Ext.name] { ... }``, kept as the key ``"[pkg.Ext.name]"``).

The parser only builds data: nothing is evaluated or imported. Any problem is a
:class:`ConfigError` naming the file (`label`), line and column.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Union

from detkeeper.errors import ConfigError

Value = Union[int, float, bool, str, "Message"]
Message = dict[str, list[Value]]

MAX_DEPTH = 100
"""Deepest message nesting read; deeper input is refused rather than exhausting the stack."""

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>(?:0[xX][0-9A-Fa-f]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)(?![A-Za-z0-9_.]))
  | (?P<bad_number>[0-9][A-Za-z0-9_.]*)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>[{}<>\[\]:,;\-./])
""", re.VERBOSE)

_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v",
            "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)
_INFINITY = {"inf", "infinity", "inff", "infinityf"}
_NAN = {"nan", "nanf"}
_BOOLEANS = {"true": True, "True": True, "false": False, "False": False}
_CLOSING = {"{": "}", "<": ">"}


@dataclass(frozen=True)
class _Token:
    kind: str  # string | number | identifier | symbol | end
    text: str
    line: int
    column: int


def parse_text_format(text: str, label: str) -> Message:
    """The top-level message of protobuf text `text`; errors name `label`, line and column."""
    return _Parser(text, label).parse()


class _Parser:
    def __init__(self, text: str, label: str) -> None:
        self.label = label
        self.tokens = list(self._tokenize(text))
        self.position = 0

    # --- tokens -------------------------------------------------------------------------------
    def _tokenize(self, text: str):
        line, line_start, index = 1, 0, 0
        while index < len(text):
            match = _TOKEN.match(text, index)
            if match is None:
                character = text[index]
                what = "an unterminated string" if character in "\"'" else f"unexpected character {character!r}"
                raise self._error_at(line, index - line_start + 1, what)
            kind = match.lastgroup
            if kind == "bad_number":
                raise self._error_at(line, index - line_start + 1, f"invalid number {match.group()!r}")
            if kind != "space":
                yield _Token(kind, match.group(), line, index - line_start + 1)
            newlines = match.group().count("\n")
            if newlines:
                line += newlines
                line_start = match.start() + match.group().rindex("\n") + 1
            index = match.end()
        yield _Token("end", "", line, index - line_start + 1)

    def _peek(self) -> _Token:
        return self.tokens[self.position]

    def _next(self) -> _Token:
        token = self.tokens[self.position]
        if token.kind != "end":
            self.position += 1
        return token

    def _accept(self, symbol: str) -> bool:
        token = self._peek()
        if token.kind == "symbol" and token.text == symbol:
            self.position += 1
            return True
        return False

    def _expect(self, symbol: str, context: str) -> None:
        if not self._accept(symbol):
            raise self._error(self._peek(), f"expected {symbol!r} {context}, found {self._describe(self._peek())}")

    @staticmethod
    def _describe(token: _Token) -> str:
        return "the end of the file" if token.kind == "end" else repr(token.text)

    def _error_at(self, line: int, column: int, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: line {line}, column {column}: {message}")

    def _error(self, token: _Token, message: str) -> ConfigError:
        return self._error_at(token.line, token.column, message)

    # --- grammar ------------------------------------------------------------------------------
    def parse(self) -> Message:
        return self._fields(closing=None, depth=0)

    def _fields(self, closing: str | None, depth: int) -> Message:
        """Fields up to `closing` (consumed) or, at the top level, the end of the file."""
        message: Message = {}
        while True:
            token = self._peek()
            if closing is None and token.kind == "end":
                return message
            if closing is not None and self._accept(closing):
                return message
            if token.kind == "end":
                raise self._error(token, f"expected {closing!r} to close a message, found the end of the file")
            name = self._field_name()
            message.setdefault(name, []).extend(self._field_values(name, depth))
            if not self._accept(","):
                self._accept(";")

    def _field_name(self) -> str:
        token = self._next()
        if token.kind == "identifier":
            return token.text
        if token.kind == "symbol" and token.text == "[":
            parts = []
            while not self._accept("]"):
                part = self._next()
                if not (part.kind == "identifier" or (part.kind == "symbol" and part.text in (".", "/"))):
                    raise self._error(part, f"expected an extension name like [pkg.Message.field], "
                                            f"found {self._describe(part)}")
                parts.append(part.text)
            if not parts:
                raise self._error(token, "expected an extension name inside [ ]")
            return "[" + "".join(parts) + "]"
        raise self._error(token, f"expected a field name, found {self._describe(token)}")

    def _field_values(self, name: str, depth: int) -> list[Value]:
        colon = self._accept(":")
        token = self._peek()
        if token.kind == "symbol" and token.text in _CLOSING:
            return [self._message(depth)]
        if token.kind == "symbol" and token.text == "[":
            return self._list(name, depth, scalars_allowed=colon)
        if not colon:
            raise self._error(token, f"expected ':' or '{{' after field {name!r}, found {self._describe(token)}")
        return [self._scalar()]

    def _message(self, depth: int) -> Message:
        opening = self._next()
        if depth + 1 > MAX_DEPTH:
            raise self._error(opening, f"messages nested more than {MAX_DEPTH} deep")
        return self._fields(closing=_CLOSING[opening.text], depth=depth + 1)

    def _list(self, name: str, depth: int, scalars_allowed: bool) -> list[Value]:
        self._next()  # [
        values: list[Value] = []
        if self._accept("]"):
            return values
        while True:
            token = self._peek()
            if token.kind == "symbol" and token.text in _CLOSING:
                values.append(self._message(depth))
            elif scalars_allowed:
                values.append(self._scalar())
            else:
                raise self._error(token, f"expected a message in the list of {name!r} (a list of plain "
                                         f"values needs ':' after the field name), found {self._describe(token)}")
            if self._accept("]"):
                return values
            self._expect(",", f"between the values of {name!r} or ']' to end the list")

    def _scalar(self) -> Value:
        token = self._next()
        if token.kind == "string":
            data = self._string_bytes(token)
            while self._peek().kind == "string":
                data += self._string_bytes(self._next())
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise self._error(token, "the string is not valid UTF-8") from None
        negative = token.kind == "symbol" and token.text == "-"
        if negative:
            token = self._next()
        if token.kind == "number":
            value = self._number(token)
            return -value if negative else value
        if token.kind == "identifier":
            lowered = token.text.lower()
            if lowered in _INFINITY:
                return -math.inf if negative else math.inf
            if lowered in _NAN:
                return math.nan
            if not negative:
                return _BOOLEANS.get(token.text, token.text)
        raise self._error(token, f"expected a value (number, string, true/false or an enum name), "
                                 f"found {self._describe(token)}")

    def _number(self, token: _Token) -> int | float:
        text = token.text
        if text[:2] in ("0x", "0X"):
            return int(text, 16)
        if re.fullmatch(r"0[0-9]+", text):
            if not re.fullmatch(r"0[0-7]+", text):
                raise self._error(token, f"invalid octal number {text!r}")
            return int(text, 8)
        if re.fullmatch(r"[0-9]+", text):
            return int(text)
        return shortest_float32(float(text.rstrip("fF")))

    def _string_bytes(self, token: _Token) -> bytes:
        body = token.text[1:-1]
        out = bytearray()
        position = 0
        for match in _ESCAPE.finditer(body):
            out += body[position:match.start()].encode("utf-8")
            octal, hexadecimal, short, long, simple = match.groups()
            if octal is not None:
                if int(octal, 8) > 0xFF:
                    raise self._error(token, f"invalid octal escape \\{octal} (more than 255)")
                out.append(int(octal, 8))
            elif hexadecimal is not None:
                out.append(int(hexadecimal, 16))
            elif short is not None or long is not None:
                code = int(short or long, 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise self._error(token, f"invalid unicode escape \\{'u' if short else 'U'}{short or long}")
                out += chr(code).encode("utf-8")
            elif simple in _ESCAPES:
                out += _ESCAPES[simple]
            else:
                raise self._error(token, f"invalid escape \\{simple} in a string")
            position = match.end()
        out += body[position:].encode("utf-8")
        return bytes(out)


def shortest_float32(value: float) -> float:
    """`value` unchanged, unless it is exactly a float32 whose shortest decimal is shorter (the
    float32 protobuf stores for ``0.9`` is ``0.8999999761581421``: that reads as ``0.9``)."""
    if not math.isfinite(value) or _float32(value) != value:
        return value
    for digits in range(1, 10):
        shorter = float(f"{value:.{digits}g}")
        if _float32(shorter) == value:
            return shorter
    return value


def _float32(value: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range: not a float32
        return math.nan

