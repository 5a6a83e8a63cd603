"""How a RequestRecord maps onto the PostgreSQL store's columns: one column per field, of its plain SQL
type, or msgpack `bytea` for values of no plain SQL type (such as `result`)."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from openhqm.results.base import RequestRecord

_encode = msgspec.msgpack.Encoder().encode
_decode_any = msgspec.msgpack.Decoder().decode
_PLAIN_TYPES = {msgspec.inspect.StrType: "text", msgspec.inspect.FloatType: "double precision",
                msgspec.inspect.IntType: "bigint", msgspec.inspect.BytesType: "bytea"}


def _column_types() -> tuple[dict[str, str], frozenset[str]]:
    """SQL type per RequestRecord field, and the fields stored as msgpack because no SQL type fits."""
    columns: dict[str, str] = {}
    packed: set[str] = set()
    info = msgspec.inspect.type_info(RequestRecord)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError("RequestRecord must be a msgspec Struct")
    for field in info.fields:
        kind = field.type
        if isinstance(kind, msgspec.inspect.UnionType):
            others = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
            kind = others[0] if len(others) == 1 else kind
        sql = _PLAIN_TYPES.get(type(kind))
        if sql is None:
            packed.add(field.name)
        columns[field.name] = sql or "bytea"
    return columns, frozenset(packed)


COLUMNS, PACKED = _column_types()


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def to_row(name: str, value: Any) -> Any:
    return _encode(value) if name in PACKED and value is not None else value


def to_record(row: asyncpg.Record) -> RequestRecord:
    fields = {name: (_decode_any(value) if name in PACKED else value)
              for name, value in row.items() if name in COLUMNS and value is not None}
    return msgspec.convert(fields, RequestRecord)  # typed: packed fields decode to plain lists and dicts
