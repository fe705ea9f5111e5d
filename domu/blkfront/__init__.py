"""The guest's block front end (Linux ``drivers/block/xen-blkfront.c``).

:class:`Blkfront` follows ``device/vbd`` in the guest's xenstore home: for each
device the toolstack adds it runs the XenBus handshake (read the back end's
features once it is in InitWait; allocate and grant a ring of up to 16 pages;
allocate an event channel; publish ``ring-ref``/``ring-refN``,
``ring-page-order``, ``event-channel``, ``protocol``, ``feature-persistent`` and
move to Initialised; when the back end is Connected, read ``sectors`` and
``info`` and move to Connected), and it follows the back end to Closing and
Closed on detach. Handshakes run in a thread of their own, since they wait for
the back end; the data path runs on the kernel's event loop.

:class:`BlockDevice` is a disk as the workload sees it (``ctx.disks["xvda"]``):
blocking and asynchronous I/O, batches, zero-copy buffers and a file view, over
a pool of persistently granted pages (:mod:`.blkfront` says how).

As in Linux's Xen drivers the handshake and the data path are kept apart:

- :mod:`.xenbus`: the handshake (:class:`Blkfront`);
- :mod:`.blkfront`: the data path (:class:`BlockDevice`, :class:`BlkFuture`,
  :class:`BlkBatch`, :class:`BlkBuffer`, :class:`DiskFile`);
- :mod:`.pool`: the pool of persistently granted pages.
"""

from .blkfront import BlkBatch, BlkBuffer, BlkFuture, BlockDevice, BlockIOError, DiskFile
from .xenbus import Blkfront

__all__ = ["Blkfront", "BlockDevice", "BlockIOError", "BlkBatch", "BlkBuffer", "BlkFuture", "DiskFile"]
