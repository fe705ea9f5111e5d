"""The guest's network front end (Linux ``drivers/net/xen-netfront.c``).

The front-end bus (``domu/xenbus_frontend.py``) finds each ``device/vif`` the
toolstack adds and runs its XenBus handshake; :class:`NetfrontDriver` says what
a vif publishes and reads at each step (the keys of ``xenlike.public.netif``).
As in Linux the handshake and the data path are kept apart:

- :mod:`.xenbus`: the driver (:class:`NetfrontDriver`) and the interface the
  workload sees (:class:`NetInterface`, in ``ctx.net``);
- :mod:`.netfront`: the data path (:class:`NetfrontQueue`) between the guest's
  TAP ``eth<devid>`` and the vif's rings.
"""

from .netfront import BackendFeatures, NetfrontQueue
from .xenbus import NetfrontDriver, NetInterface

__all__ = ["BackendFeatures", "NetfrontDriver", "NetfrontQueue", "NetInterface"]
