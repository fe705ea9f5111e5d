"""blkback: dom0's virtual block devices (Linux ``drivers/block/xen-blkback``).

``xenbus.py`` runs the XenBus handshake in dom0's main process; ``blkback.py`` is
the data path, run by ``worker.py`` in one process per connected device;
``vbd.py`` opens the image behind a device.
"""

from .xenbus import BackendError, Blkback, BlkbackDevice

__all__ = ["Blkback", "BlkbackDevice", "BackendError"]
