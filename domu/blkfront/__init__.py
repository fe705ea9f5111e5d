"""The guest's block front end (Linux ``drivers/block/xen-blkfront.c``).

The front-end bus (``domu/xenbus_frontend.py``) finds each ``device/vbd`` the
toolstack adds and runs its XenBus handshake; :class:`BlkfrontDriver` says what
a vbd publishes and reads at each step (the keys of ``xenlike.public.blkif``).

:class:`BlockDevice` is a disk as the workload sees it (``ctx.disks["xvda"]``):
blocking and asynchronous I/O, batches, zero-copy buffers and a file view, over
a pool of persistently granted pages (:mod:`.blkfront` says how).

As in Linux's Xen drivers the handshake and the data path are kept apart:

- :mod:`.xenbus`: the driver (:class:`BlkfrontDriver`);
- :mod:`.blkfront`: the data path (:class:`BlockDevice`, :class:`BlkFuture`,
  :class:`BlkBatch`, :class:`BlkBuffer`, :class:`DiskFile`);
- :mod:`.pool`: the pool of persistently granted pages.
"""

from .blkfront import BlkBatch, BlkBuffer, BlkFuture, BlockDevice, BlockIOError, DiskFile
from .xenbus import BlkfrontDriver

__all__ = ["BlkfrontDriver", "BlockDevice", "BlockIOError", "BlkBatch", "BlkBuffer", "BlkFuture", "DiskFile"]
