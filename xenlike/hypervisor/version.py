"""What the hypervisor says it is (``xen/common/version.c``, ``do_xen_version``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Result

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["VERSION", "version_info", "xen_version"]

VERSION = {"major": 4, "minor": 19, "extra": "-xenlike", "caps": "xenlike-1-x86_64"}


def version_info(hv: Hypervisor) -> dict:
    """:data:`VERSION` and the hypervisor's command line (``commandline``, XENVER_commandline)."""
    return {**VERSION, "commandline": hv.commandline}


def xen_version(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XENVER_version, XENVER_extraversion, XENVER_capabilities and XENVER_commandline in one answer."""
    return version_info(hv), []
