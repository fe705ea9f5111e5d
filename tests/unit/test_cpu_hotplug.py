"""vCPUs brought online join ``ctx.vcpus`` in order, and the list is never seen empty meanwhile.

The workload holds ``ctx.vcpus`` (the kernel's own list) and reads it from its
threads while the hotplug thread changes it. An in-place sort empties a list for
as long as it runs, and its key is Python code, during which another thread may
read it: each vCPU here records the list's length whenever its index is read.
"""

from __future__ import annotations

from types import SimpleNamespace

from domu import cpu_hotplug
from domu.cpu_hotplug import CpuHotplug


class _Vcpu:
    def __init__(self, index: int, kernel: SimpleNamespace) -> None:
        self._index, self.pid, self._kernel = index, 0, kernel

    @property
    def index(self) -> int:
        self._kernel.lengths_seen.append(len(self._kernel.vcpus))
        return self._index


def test_a_vcpu_brought_up_joins_in_order_and_the_list_never_looks_empty(monkeypatch):
    kernel = SimpleNamespace(
        label="d9 (test)",
        vcpus_globals=None,
        vcpu_process_name=lambda index: f"vcpu{index}",
        hypercall=SimpleNamespace(call=lambda *args, **kwargs: ({}, [])),
        lengths_seen=[],
    )
    kernel.vcpus = [_Vcpu(1, kernel), _Vcpu(3, kernel)]
    monkeypatch.setattr(cpu_hotplug, "fork_vcpu", lambda index, name, names: _Vcpu(index, kernel))
    CpuHotplug(kernel, 4)._up(2)
    assert [vcpu._index for vcpu in kernel.vcpus] == [1, 2, 3]
    assert kernel.lengths_seen and 0 not in kernel.lengths_seen
