"""blkback: dom0's virtual block devices (Linux ``drivers/block/xen-blkback``).

``xenbus.py`` is the driver on dom0's back-end bus (probe, connect, remove);
``blkback.py`` is the data path, run in one worker process per connected device
(``dom0/backend_worker.py``); ``vbd.py`` opens the image behind a device.
"""

from .xenbus import BlkbackDriver

__all__ = ["BlkbackDriver"]
