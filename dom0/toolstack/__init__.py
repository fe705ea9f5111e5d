"""The toolstack: xl's operations behind dom0's zmq API, and the domU lifecycle (libxl's place in Xen).

- :mod:`.server`: :class:`Toolstack`, the API socket, the operation table
  (:data:`~.server.OPS`), waiters and polls for replies that come later;
- :mod:`.request`: a request and its answer, and :class:`ToolstackError`;
- :mod:`.lifecycle`: the domU table and the ``on_*`` actions on ``VIRQ_DOM_EXC``;
- ``ops_domain``, ``ops_sched``, ``ops_console``, ``ops_xenstore``, ``ops_device``:
  the operations, grouped as xl's sources are.
"""

from .request import ToolstackError
from .server import Toolstack

__all__ = ["Toolstack", "ToolstackError"]
