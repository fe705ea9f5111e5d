"""A saved image's or a migration's xenstore nodes are held to what the guest could have written.

A guest holds at most xenstore's ``nodes`` quota of nodes, each at most
``node_size`` octets; its save carries them in XENSTORE_DATA records. An image
that carries more, in one record or spread over many, used to be kept whole in
dom0's memory before the restore wrote it back: 33 MiB of records became 307 MiB.
"""

from __future__ import annotations

import io

import pytest

from dom0.toolstack.ops_migrate import read_image
from dom0.xenstored import Quotas
from xenlike.public.migration_stream import DomainInfo, StreamError, StreamWriter

QUOTAS = Quotas(nodes=4, node_size=16)


def _image(*records: list[tuple[str, str]]) -> bytes:
    chunks: list[bytes] = []
    writer = StreamWriter(chunks.append)
    writer.domain_info(DomainInfo("n", "00000000-0000-0000-0000-0000000000a1", 8192, 1, 1, {"memory": 32}))
    writer.static_data_end()
    for nodes in records:
        writer.xenstore_data(nodes)
    writer.end()
    return b"".join(chunks)


def _read(data: bytes):
    return read_image(io.BytesIO(data).read, "test.save", QUOTAS)


def _nodes(count: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"data/k{i}", "v") for i in range(start, start + count)]


def test_as_many_nodes_as_the_quota_allows_are_kept():
    with pytest.raises(StreamError, match="no WORKLOAD_STATE"):  # the nodes themselves passed
        _read(_image(_nodes(2), _nodes(2, 2)))


@pytest.mark.parametrize("records", [[_nodes(5)], [_nodes(3), _nodes(2, 3)], [_nodes(1, i) for i in range(5)]])
def test_more_nodes_than_the_quota_are_refused_however_they_are_spread(records):
    with pytest.raises(
        StreamError, match=r"more than 4 nodes, the most a domain may hold here \(xenstore quota 'nodes'\)"
    ):
        _read(_image(*records))


def test_a_node_larger_than_the_quota_is_refused():
    with pytest.raises(StreamError, match=r"node 'data/big' holds 17 characters, over the 16 a node may"):
        _read(_image([("data/big", "x" * 17)]))
