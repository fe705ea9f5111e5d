"""Hypercall replies larger than one datagram of the channel arrive whole; one over the limit is refused by name.

The original failure: past ~900 guests, dom0's ``getdomaininfo`` reply (216 KB)
exceeded the channel's send buffer (208 KiB), the hypervisor dropped it on
EMSGSIZE and dom0 waited for it forever. A guest's multicall of 3,000 calls
makes a reply as large without creating 900 guests.
"""

from __future__ import annotations

from .conftest import console_json, workload
from .test_lifecycle import write_cluster


def test_a_reply_larger_than_a_datagram_is_answered_and_the_host_still_answers(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "big", "memory": 32, "workload": workload("big_reply")}])))
    got = console_json(host, "big", "big_reply", timeout=30)
    assert got["calls"] == 3000 and got["bytes"] > 212992  # more than the default send buffer
    refused = console_json(host, "big", "too_large", timeout=30)
    assert "exceeds the channel's limit of 1048576" in refused["error"]
    assert "big" in host.domains()  # dom0's own hypercalls still answer
    assert "lost" not in host.log("hypervisor") and "refused" not in host.log("hypervisor")
