"""A hypervisor-direct disk: every request a ``vdisk_io`` hypercall (trap and emulate).

The hypervisor checks the request as blkback would and copies between the image
and the guest's frames itself; a batch goes as one multicall, one round trip for
many requests, as a PV guest batches its hypercalls. Nothing here is shared
with a back end: no ring, no grants, no event channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenlike.kernel.hypercall import HypercallError
from xenlike.public.blkif import BLKIF_OP_DISCARD, BLKIF_OP_READ, BLKIF_OP_WRITE
from xenlike.public.vdisk import MODEL_DIRECT

from ..blkfront.blkfront import BlockIOError
from .disk import LocalDisk, Request

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["DirectDisk"]


class DirectDisk(LocalDisk):
    """A disk whose device model is the hypervisor (``model=direct``)."""

    model = MODEL_DIRECT

    def __init__(self, kernel: GuestKernel, vdev: str, devid: int, sectors: int, readonly: bool) -> None:
        super().__init__(kernel, vdev, devid, sectors, readonly)

    def _run(self, requests: list[Request]) -> list[int]:
        args = [self._args(request) for request in requests]
        hypercall = self.kernel.hypercall
        try:
            if len(args) == 1:
                result, _ = hypercall.call("vdisk_io", **args[0])
                return [result["status"]]
            calls: list[dict] = [{"op": "vdisk_io", "args": one} for one in args]
            return [result["status"] for result, _ in hypercall.multicall(calls)]
        except HypercallError as exc:
            raise BlockIOError(f"{self.vdev}: the hypervisor refused the request: {exc.strerror or exc}") from None

    def _args(self, request: Request) -> dict[str, Any]:
        args: dict[str, Any] = {"devid": self.devid, "operation": request.op, "sector": request.sector}
        if request.op in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            args.update(nbytes=request.nbytes, pfn=request.pfn)
        elif request.op == BLKIF_OP_DISCARD:
            args["nr_sectors"] = request.nr_sectors
        return args
