"""``network-list`` and ``block-list`` show what a guest wrote into its front-end nodes, never fail on it.

The columns read from the guest's own directory (``event-channel``, the ring
refs) are the guest's to write: one that is no number (or no text) shows as -1,
as xl shows a field it cannot read.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.toolstack import ops_device
from dom0.xenstored import LocalXenstore, Xenstored
from xenlike.public.xenbus import frontend_path


@pytest.mark.parametrize("value", [b"x", b"\xff\xfe", b"12 34", b"4294967296", b"9" * 2000, b"-1", "\u0663".encode()])
def test_a_vif_whose_guest_wrote_garbage_is_listed_with_minus_one(value):
    daemon = Xenstored()
    toolstack = LocalXenstore(daemon)
    front = frontend_path(1, "vif", 0)
    toolstack.write(front, "", perms=["n1", "r0"])
    guest = LocalXenstore(daemon, 1)
    guest.write(f"{front}/event-channel", value)  # its own node
    guest.write(f"{front}/tx-ring-ref", b"8")
    built = SimpleNamespace(domid=1, config={"vif": [{"devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "xenbr0"}]})
    ts = SimpleNamespace(xs=toolstack, lifecycle=SimpleNamespace(find=lambda name: built))
    [row] = ops_device.network_list(ts, SimpleNamespace(args={"domain": "g1"}))
    assert row["evtch"] == -1 and row["tx_ring_ref"] == 8 and row["rx_ring_ref"] == -1
