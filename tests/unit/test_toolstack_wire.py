"""The toolstack API's wire format: a table of rows crosses as columns and comes back as the same rows
(hypothesis), and bytes that claim to be a table but are not one are refused, never turned into rows."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from xenlike.public.toolstack_wire import TABLE_EXT, Table, pack, unpack

keys = st.lists(st.text(max_size=8), unique=True, min_size=1, max_size=6)
values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text())


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[dict]]:
    names = draw(keys)
    rows = draw(st.lists(st.fixed_dictionaries({name: values for name in names}), max_size=20))
    return names, rows


@given(tables())
def test_a_table_comes_back_as_its_rows(table: tuple[list[str], list[dict]]) -> None:
    names, rows = table
    columns = [[row[name] for row in rows] for name in names]
    message = {"id": 7, "ok": True, "result": Table(names, columns)}
    assert unpack(pack(message)) == {"id": 7, "ok": True, "result": rows}


@given(tables())
def test_a_table_costs_fewer_bytes_than_its_rows_once_there_are_several(table: tuple[list[str], list[dict]]) -> None:
    names, rows = table
    assume(len(rows) >= 4 and len(names) >= 2)
    columns = [[row[name] for row in rows] for name in names]
    assert len(pack(Table(names, columns))) < len(msgpack.packb(rows, use_bin_type=True))


def test_a_table_whose_columns_differ_in_length_is_refused_when_made() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Table(("a", "b"), ([1, 2], [3]))
    with pytest.raises(ValueError, match="2 keys has 1 columns"):
        Table(("a", "b"), ([1],))


def ext(body: object) -> bytes:
    return msgpack.packb(msgpack.ExtType(TABLE_EXT, msgpack.packb(body, use_bin_type=True)), use_bin_type=True)


@pytest.mark.parametrize(
    "body, why",
    [
        ([["a", "b"], [[1, 2], [3]]], "differ in length"),
        ([["a"], [[1], [2]]], "1 keys has 2 columns"),
        ([[1], [[1]]], "keys are not strings"),
        ([["a"], [5]], "columns not lists"),
        ({"a": [1]}, "not \\[keys, columns\\]"),
        ([["a"]], "not \\[keys, columns\\]"),
    ],
)
def test_bytes_that_are_not_a_table_are_refused(body: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        unpack(ext(body))


def test_lists_inside_a_table_stay_lists() -> None:
    table = Table(("vbds", "devids"), ([[{"rd": 1}], []], [{"vbds": [51712]}, {"vbds": []}]))
    rows = unpack(pack(table))
    assert rows == [{"vbds": [{"rd": 1}], "devids": {"vbds": [51712]}}, {"vbds": [], "devids": {"vbds": []}}]
    assert type(rows[0]["vbds"]) is list and type(rows[0]["devids"]["vbds"]) is list


def test_another_extension_type_is_left_as_it_is() -> None:
    data = msgpack.packb(msgpack.ExtType(9, b"xy"))
    assert unpack(data) == msgpack.ExtType(9, b"xy")
