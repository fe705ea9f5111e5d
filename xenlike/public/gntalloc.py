"""Pages a domU allocates to share with another domU (Linux's ``include/uapi/xen/gntalloc.h``).

In Xen a guest shares any of its frames by granting it, and a peer maps the grant
through the hypervisor. xenlike's memory is one memfd per domain, and whoever
holds that fd holds all of the domain's memory, so only dom0 is ever given a
domU's memfd (:mod:`xenlike.hypervisor.grant_table`). For guest-to-guest sharing
(vchan) the hypervisor keeps a second, small kind of memory:

* ``gntalloc_alloc(count)`` makes a memfd of ``count`` pages, sealed so its size
  can never change (``F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``: a granter
  cannot shrink it under a mapper and fault it), charges the pages to the host's
  pool and returns the fd and the first of ``count`` pseudo-frame numbers from
  ``GNTALLOC_PFN_BASE`` up. The domain maps the fd and grants those frame numbers
  as it grants its own (``grant_entry_v1.frame``), exactly as Linux's gntalloc
  device allocates pages and grants them.
* ``grant_map`` of such a grant, by the domain it names, returns that memfd (an
  ``O_RDONLY`` reopening of it for a read-only grant) with each frame's page
  index in it, so the mapper reaches those pages and nothing else of the granter.
* ``gntalloc_unmap_notify(frame | handle, offset, port)``: when the owner of
  page ``frame`` frees it or dies, or when the mapper of mapping ``handle``
  unmaps it or dies, the hypervisor clears the byte at ``offset`` of that page
  and signals ``port``, as ``IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`` and
  ``IOCTL_GNTDEV_SET_UNMAP_NOTIFY`` with ``UNMAP_NOTIFY_CLEAR_BYTE |
  UNMAP_NOTIFY_SEND_EVENT`` do; vchan uses it for ``srv_live``/``cli_live``.
* ``gntalloc_free(frame)`` drops an area. Mappings others hold stay valid until
  they unmap (their fd keeps the pages); new maps of its grants are refused.

A domain may hold at most ``GNTALLOC_MAX_PAGES`` such pages (Linux's gntalloc
``limit`` parameter, 1024 by default) in at most ``GNTALLOC_MAX_AREAS`` areas.
"""

from __future__ import annotations

__all__ = [
    "GNTALLOC_PFN_BASE",
    "GNTALLOC_MAX_PAGES",
    "GNTALLOC_MAX_AREAS",
    "UNMAP_NOTIFY_CLEAR_BYTE",
    "UNMAP_NOTIFY_SEND_EVENT",
    "is_gntalloc_frame",
]

#: The first pseudo-frame of allocated pages: above any domain's memory (1 TiB of frames).
GNTALLOC_PFN_BASE = 1 << 28
GNTALLOC_MAX_PAGES = 1024
GNTALLOC_MAX_AREAS = 16

# gntalloc.h's unmap-notify actions; xenlike always does both.
UNMAP_NOTIFY_CLEAR_BYTE = 0x1
UNMAP_NOTIFY_SEND_EVENT = 0x2


def is_gntalloc_frame(frame: int) -> bool:
    """Whether ``frame`` is a pseudo-frame of allocated pages rather than one of a domain's memory."""
    return frame >= GNTALLOC_PFN_BASE
