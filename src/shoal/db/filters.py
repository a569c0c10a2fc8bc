"""Payload filters: a small JSON grammar compiled to a parameterised SQLite condition.

Grammar (a filter is a JSON object)::

    filter     := { clause, ... }                  every clause must hold (AND)
    clause     := "$and": [filter, ...]            all hold
                | "$or":  [filter, ...]            at least one holds
                | "$not": filter                   does not hold
                | path: value                      same as {"$eq": value}
                | path: { op: operand, ... }       every operator must hold
    path       := "key" or "key.sub.key"           dotted keys into nested objects
                | "$document": { "$contains" | "$not_contains": text, ... }
    op         := "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$in" | "$nin" | "$exists"

Semantics, for the value ``x`` found at ``path`` in a payload:

- ``$eq v``: ``x == v`` with JSON types kept apart (``true`` is not ``1``, ``"1"`` is not
  ``1``; ``1`` equals ``1.0``); when ``x`` is an array, some element equals ``v``. A missing
  path matches nothing. ``v`` is a string, number, boolean or null.
- ``$ne v``: not ``$eq v`` (so a missing path matches).
- ``$gt/$gte/$lt/$lte v``: ``v`` is a number or a string; numbers compare with numbers and
  strings with strings (by code point), anything else does not match; arrays by any element.
- ``$in [v, ...]``: ``$eq`` one of them; ``$nin``: none of them (a missing path matches).
- ``$exists true|false``: the path is (is not) present (a JSON null counts as present).
- ``$document``: the point's document holds (``$contains``) or does not hold
  (``$not_contains``) ``text`` as typed (case included); a point without one holds nothing.

A filter that breaks the grammar raises ``FilterError`` (a ``ValueError``) naming the place.
``compile_filter(f)`` returns ``(sql, params)``: a condition over a TEXT column ``payload``
holding JSON objects, for SQLite's JSON1 functions.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from shoal.errors import FilterError

COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS}
MAX_DEPTH = 32


def compile_filter(flt: Any, column: str = "payload", indexed: frozenset[str] | set[str] = frozenset(),
                   uid: str = "uid") -> tuple[str, list[Any]]:
    """SQL condition and parameters equivalent to ``flt`` over JSON column ``column``.

    Comparisons on a path in ``indexed`` read the payload index instead: a table
    ``field_index(field, type, value, uid)`` with one row per scalar value (array elements
    included) of each indexed field (``shoal.db.payloads``), which SQLite searches through
    its B-tree instead of reading every payload. Both forms select the same rows. ``uid`` is
    the expression those conditions test (``"+uid"`` keeps SQLite from driving a query of a
    small table by the index's row ids).
    """
    params: list[Any] = []
    sql = _filter(flt, column, params, "filter", 0, (frozenset(indexed), uid))
    return sql, params


def _filter(flt: Any, col: str, params: list[Any], where: str, depth: int,
            indexed: tuple[frozenset[str], str]) -> str:
    if depth > MAX_DEPTH:
        raise FilterError(f"{where}: nested more than {MAX_DEPTH} levels")
    if not isinstance(flt, dict):
        raise FilterError(f"{where}: a filter must be an object, got {type(flt).__name__}")
    if not flt:
        return "1"
    parts = []
    for key, value in flt.items():
        if not isinstance(key, str):
            raise FilterError(f"{where}: keys must be strings, got {key!r}")
        here = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{here}: expected a non-empty list of filters")
            subs = [_filter(v, col, params, f"{here}[{i}]", depth + 1, indexed) for i, v in enumerate(value)]
            parts.append("(" + (" AND " if key == "$and" else " OR ").join(subs) + ")")
        elif key == "$not":
            parts.append(f"NOT ({_filter(value, col, params, here, depth + 1, indexed)})")
        elif key == "$document":
            parts.append(_document(value, params, here, indexed[1]))
        elif key.startswith("$"):
            raise FilterError(f"{here}: unknown operator {key!r} (expected $and, $or, $not, $document "
                              "or a field)")
        else:
            parts.append(_field(key, value, col, params, here, indexed[1] if key in indexed[0] else None))
    return "(" + " AND ".join(parts) + ")"


def _document(spec: Any, params: list[Any], where: str, uid: str) -> str:
    """``{"$contains": text}`` / ``{"$not_contains": text}`` on the point's document (as
    typed, case included; a point without a document contains nothing)."""
    if not isinstance(spec, dict) or not spec:
        raise FilterError(f"{where}: expected an object such as {{\"$contains\": \"text\"}}")
    parts = []
    for op, text in spec.items():
        if op not in ("$contains", "$not_contains"):
            raise FilterError(f"{where}.{op}: unknown operator (expected $contains or $not_contains)")
        if not isinstance(text, str) or not text:
            raise FilterError(f"{where}.{op}: expected a non-empty string")
        params.append(text)
        has = f"({uid} IN (SELECT uid FROM documents WHERE instr(document, ?) > 0))"
        parts.append(has if op == "$contains" else f"NOT {has}")
    return "(" + " AND ".join(parts) + ")"


def json_path(key: str, where: str = "filter") -> str:
    """SQLite JSON path of a dotted key (each part quoted)."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise FilterError(f"{where}: {key!r} is not a valid path (empty key)")
    if any('"' in p or "\\" in p or "\x00" in p for p in parts):
        raise FilterError(f"{where}: {key!r}: keys may not contain '\"', '\\' or NUL")
    return "$" + "".join(f'."{p}"' for p in parts)


def _field(key: str, spec: Any, col: str, params: list[Any], where: str, index_uid: str | None) -> str:
    path = json_path(key, where)
    compare = _indexed_compare(key, index_uid) if index_uid else _elementwise_at(col, path)
    if not (isinstance(spec, dict) and any(k.startswith("$") for k in spec if isinstance(k, str))):
        return compare(_scalar(spec, where), "=", params)
    parts = []
    for op, operand in spec.items():
        here = f"{where}.{op}"
        if op not in OPERATORS:
            raise FilterError(f"{here}: unknown operator (expected one of {sorted(OPERATORS)})")
        if op == "$eq":
            parts.append(compare(_scalar(operand, here), "=", params))
        elif op == "$ne":
            parts.append(f"NOT {compare(_scalar(operand, here), '=', params)}")
        elif op in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                raise FilterError(f"{here}: expected a non-empty list of values")
            any_of = "(" + " OR ".join(compare(_scalar(v, f"{here}[{i}]"), "=", params)
                                       for i, v in enumerate(operand)) + ")"
            parts.append(any_of if op == "$in" else f"NOT {any_of}")
        elif op == "$exists":
            if not isinstance(operand, bool):
                raise FilterError(f"{here}: expected true or false")
            params.append(path)
            parts.append(f"(json_type({col}, ?) IS {'NOT ' if operand else ''}NULL)")
        else:
            if isinstance(operand, bool) or not isinstance(operand, (str, numbers.Real)):
                raise FilterError(f"{here}: expected a number or a string, got {type(operand).__name__}")
            parts.append(compare(_scalar(operand, here), COMPARISONS[op], params))
    return "(" + " AND ".join(parts) + ")"


def _scalar(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        if not -(2**63) <= int(value) < 2**63:
            raise FilterError(f"{where}: integers must fit in 64 bits, got {value!r}")
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise FilterError(f"{where}: numbers must be finite, got {value!r}")
        return float(value)
    raise FilterError(f"{where}: expected a string, number, boolean or null, got {type(value).__name__}")


def _types_of(value: Any) -> tuple[str, ...]:
    """json_type names that can equal ``value``."""
    if value is None:
        return ("null",)
    if value is True:
        return ("true",)
    if value is False:
        return ("false",)
    if isinstance(value, str):
        return ("text",)
    return ("integer", "real")


def _elementwise(col: str, path: str, value: Any, op: str, params: list[Any]) -> str:
    """The value at ``path`` (or, for an array, one of its elements) ``op`` ``value``, with
    JSON types kept apart. Parameters are appended in the order of the ``?`` they fill."""
    types = _types_of(value)
    marks = ", ".join("?" * len(types))
    valued = not (value is None or isinstance(value, bool))  # the type alone decides
    scalar = f"coalesce(json_type({col}, ?), '') IN ({marks})"  # never NULL: NOT stays exact
    params += [path, *types]
    if valued:
        scalar += f" AND json_extract({col}, ?) {op} ?"
        params += [path, value]
    element = f"e.type IN ({marks})"
    params += [path, path, *types]
    if valued:
        element += f" AND e.value {op} ?"
        params.append(value)
    return (f"(({scalar}) OR (coalesce(json_type({col}, ?), '') = 'array' AND "
            f"EXISTS (SELECT 1 FROM json_each({col}, ?) AS e WHERE {element})))")


def _elementwise_at(col: str, path: str):
    """Comparison against the JSON in column ``col`` at ``path``."""
    return lambda value, op, params: _elementwise(col, path, value, op, params)


def _indexed_compare(field: str, uid: str):
    """Comparison through the payload index of ``field`` (same rows as ``_elementwise``)."""
    def compare(value: Any, op: str, params: list[Any]) -> str:
        types = _types_of(value)
        sql = (f"({uid} IN (SELECT uid FROM field_index WHERE field = ? AND type IN "
               f"({', '.join('?' * len(types))})")
        params += [field, *types]
        if not (value is None or isinstance(value, bool)):
            sql += f" AND value {op} ?"
            params.append(value)
        return sql + "))"
    return compare
