"""A host and its run directory: one host per run directory, host memory checked against the machine's,
``info`` as xl prints it, and logs that say what happened at a clean shutdown."""

from __future__ import annotations

import re

from .conftest import wait_for
from .test_lifecycle import write_cluster


def test_a_clean_shutdown_is_logged_as_one(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker"}])))
    wait_for(lambda: "tick 1" in host.log("t"), what="t's first tick")
    assert "had to be destroyed" not in host.xl("down").stdout
    wait_for(lambda: not host.processes(), what="every process of the host to exit")
    hypervisor, dom0 = host.log("hypervisor"), host.log("dom0")
    assert "SIGKILL" not in hypervisor and "SIGKILL" not in dom0
    assert "d0 (Domain-0): stopped (host shutdown)" in hypervisor
    assert re.search(r"d1 \(t\): shut down \(poweroff\); on_poweroff is destroy", dom0), dom0
    assert not re.search(r"shut down \(\w+: shut down", dom0), dom0  # the reason is said once
