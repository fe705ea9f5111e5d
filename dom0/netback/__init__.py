"""netback: dom0's virtual network interfaces (Linux ``drivers/net/xen-netback``).

``xenbus.py`` is the driver on dom0's back-end bus (probe, connect, remove);
``netback.py`` is the data path, run in one worker process per connected vif
(``dom0/backend_worker.py``), between the vif's rings and its TAP
``vif<domid>.<devid>`` on a bridge.
"""

from .xenbus import NetbackDriver

__all__ = ["NetbackDriver"]
