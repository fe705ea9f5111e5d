"""Inter-domain byte streams: the vchan shared page (``xen/include/public/io/libxenvchan.h``).

A vchan is a pair of byte rings between a *server* domain, which allocates and
grants the memory, and a *client* domain, which maps it. Unlike ``io/ring.h`` the
two directions are symmetric and their sizes are chosen at run time, so the page
describes its own layout::

    struct ring_shared {                      byte offset
        uint32_t cons, prod;                  0, 4
    };
    struct vchan_interface {
        struct ring_shared left, right;       0, 8     left: client writes, server reads
                                                       right: server writes, client reads
        uint16_t left_order, right_order;     16, 18   log2 of each ring's size
        uint8_t cli_live, srv_live;           20, 21   VCHAN_EXITED / _CONNECTED / _WAITING
        uint8_t cli_notify, srv_notify;       22, 23   VCHAN_NOTIFY_WRITE | VCHAN_NOTIFY_READ
        uint32_t grants[];                    24..     refs of the left ring's pages, then the right's
    };

A ring of order 10 lives in this page at offset 1024, one of order 11 at offset
2048 (at most one ring of each, so they never overlap); a ring of order 12 to 20
(``MAX_RING_SHIFT``) is ``2 ** (order - 12)`` pages of its own, granted
separately and listed in ``grants``. :func:`choose_orders` is the server's choice
(``libxenvchan_server_init``): both rings in the page when the minimum sizes asked
for allow it, else the next power of two of at least a page.

Notification suppression (``io.c``'s ``request_notify``/``send_notify``): a side
about to wait sets the bit it waits for in the *peer's* notify byte
(``VCHAN_NOTIFY_WRITE`` "tell me when you write", ``VCHAN_NOTIFY_READ`` "tell me
when you read") with an atomic OR; a side that moved an index atomically clears
the matching bit in its *own* notify byte and signals the event channel only if
the bit was set. Both operations are locked instructions
(:func:`xenlike.public.atomic.fetch_or8`/``fetch_and8``), so each is also the full
barrier ``xen_mb()`` that must separate an index store from the following load.

Liveness: the server starts with ``srv_live = 1`` and ``cli_live = 2`` (waiting);
the client sets ``cli_live = 1`` when it has connected. Whoever closes sets its own
byte to 0 and signals. A side that dies without closing has its byte cleared and
the event channel signalled by the hypervisor, as Linux's gntalloc/gntdev
``UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT`` do when the mapping goes
(:mod:`xenlike.public.gntalloc`). Either way the peer sees end of stream.

XenStore contract (Qubes' ``libvchan_server_init(domain, port, ...)`` naming):

============================================================  ==========  =========================
node (``<srv>``: the server's domid, ``<cli>``: the client's)  written by  permissions
============================================================  ==========  =========================
``/local/domain/<srv>/data/vchan``                             toolstack   ``n0 r<srv>``
``/local/domain/<srv>/data/vchan/<cli>``                       toolstack   ``n0 r<srv>``
``/local/domain/<srv>/data/vchan/<cli>/<port>``                toolstack   ``n<srv> r<cli>``
``.../<port>/ring-ref``: grant ref of this page                server      ``n<srv> r<cli>``
``.../<port>/event-channel``: the server's unbound port        server      ``n<srv> r<cli>``
``/local/domain/<cli>/vchan/<server-name>``: ``<srv>``         toolstack   ``n0 r<cli>``
``/local/domain/<srv>/vchan/<client-name>``: ``<cli>``         toolstack   ``n0 r<srv>``
============================================================  ==========  =========================

``data/vchan`` is made for every domain when it is created, before its first
xenstore request is answered. The toolstack writes a ``<cli>/<port>`` directory
only for the pairs the server's domain config allows (``vchan =
["client-name:port", ...]``, :mod:`xenlike.tools.config.vchan`), so the guests
cannot decide who connects: the
``data/vchan`` subtree is dom0's, and a server can write only inside the
directories dom0 made for it. The server writes ``ring-ref`` and
``event-channel`` in one transaction when it listens and removes them when it
closes; a client waits for ``event-channel``, and a missing ``<port>``
directory means the policy refuses it.
"""

from __future__ import annotations

from xenlike.public.ring import ByteRing, PageLayout
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "VCHAN_INTERFACE",
    "VCHAN_NOTIFY_WRITE",
    "VCHAN_NOTIFY_READ",
    "VCHAN_EXITED",
    "VCHAN_CONNECTED",
    "VCHAN_WAITING",
    "SMALL_RING_SHIFT",
    "LARGE_RING_SHIFT",
    "SMALL_RING_OFFSET",
    "LARGE_RING_OFFSET",
    "PAGE_SHIFT",
    "MAX_RING_SHIFT",
    "MAX_RING_SIZE",
    "GRANTS_OFFSET",
    "VchanError",
    "choose_orders",
    "ring_pages",
    "check_orders",
    "vchan_dir",
    "port_path",
    "peer_name_path",
    "VchanInterface",
]

#: ``struct vchan_interface`` without its flexible ``grants[]``.
VCHAN_INTERFACE = PageLayout(
    "vchan_interface",
    [
        ("left_cons", "I"),
        ("left_prod", "I"),
        ("right_cons", "I"),
        ("right_prod", "I"),
        ("left_order", "H"),
        ("right_order", "H"),
        ("cli_live", "B"),
        ("srv_live", "B"),
        ("cli_notify", "B"),
        ("srv_notify", "B"),
    ],
)
#: ``offsetof(struct vchan_interface, grants)``.
GRANTS_OFFSET = VCHAN_INTERFACE.size

VCHAN_NOTIFY_WRITE = 0x1  # "send a notify when data is written"
VCHAN_NOTIFY_READ = 0x2  # "send a notify when data is read (consumed)"

# cli_live / srv_live (libxenvchan_is_open's results)
VCHAN_EXITED = 0
VCHAN_CONNECTED = 1
VCHAN_WAITING = 2  # the server's view until a client connects

PAGE_SHIFT = 12
SMALL_RING_SHIFT = 10
LARGE_RING_SHIFT = 11
SMALL_RING_OFFSET = 1024
LARGE_RING_OFFSET = 2048
MAX_SMALL_RING = 1 << SMALL_RING_SHIFT
MAX_LARGE_RING = 1 << LARGE_RING_SHIFT
# Beyond this the grant refs of two rings no longer fit the page.
MAX_RING_SHIFT = 20
MAX_RING_SIZE = 1 << MAX_RING_SHIFT


class VchanError(ValueError):
    """A vchan page or request that cannot be right (orders, sizes, grants)."""


def _min_order(size: int) -> int:
    order = PAGE_SHIFT
    while size > (1 << order):
        order += 1
    return order


def choose_orders(read_min: int, write_min: int) -> tuple[int, int]:
    """The server's (left, right) orders for its minimum read and write sizes (``libxenvchan_server_init``).

    The server reads the left ring and writes the right one. In-page rings are
    used when they suffice, so a small vchan is one page.
    """
    for name, value in (("read_min", read_min), ("write_min", write_min)):
        if not 0 <= value <= MAX_RING_SIZE:
            raise VchanError(f"{name} {value} is outside 0..{MAX_RING_SIZE} (MAX_RING_SHIFT {MAX_RING_SHIFT})")
    left, right = _min_order(read_min), _min_order(write_min)
    if read_min <= MAX_SMALL_RING and write_min <= MAX_LARGE_RING:
        return SMALL_RING_SHIFT, LARGE_RING_SHIFT
    if read_min <= MAX_LARGE_RING and write_min <= MAX_SMALL_RING:
        return LARGE_RING_SHIFT, SMALL_RING_SHIFT
    if read_min <= MAX_LARGE_RING:
        return LARGE_RING_SHIFT, right
    if write_min <= MAX_LARGE_RING:
        return left, LARGE_RING_SHIFT
    return left, right


def ring_pages(order: int) -> int:
    """Separately granted pages of a ring of ``order`` (0 for the in-page rings)."""
    return 1 << (order - PAGE_SHIFT) if order >= PAGE_SHIFT else 0


def check_orders(left_order: int, right_order: int) -> None:
    """Refuse orders a client must not trust (``init_gnt_cli``'s checks, and room for the grants).

    Each order is 10..20; two in-page rings must not share an offset; the grant
    refs must end before an in-page ring begins.
    """
    for name, order in (("left_order", left_order), ("right_order", right_order)):
        if not SMALL_RING_SHIFT <= order <= MAX_RING_SHIFT:
            raise VchanError(f"{name} {order} is outside {SMALL_RING_SHIFT}..{MAX_RING_SHIFT}")
    if left_order == right_order and left_order < PAGE_SHIFT:
        raise VchanError(f"both rings have order {left_order}: two in-page rings would overlap")
    in_page = [_in_page_offset(order) for order in (left_order, right_order) if order < PAGE_SHIFT]
    grants_end = GRANTS_OFFSET + 4 * (ring_pages(left_order) + ring_pages(right_order))
    limit = min(in_page, default=PAGE_SIZE)
    if grants_end > limit:
        raise VchanError(f"the grant refs of orders {left_order}/{right_order} run past byte {limit} of the page")


def _in_page_offset(order: int) -> int:
    return SMALL_RING_OFFSET if order == SMALL_RING_SHIFT else LARGE_RING_OFFSET


def vchan_dir(server: int) -> str:
    """The toolstack's directory of a server's vchans."""
    return f"/local/domain/{server}/data/vchan"


def port_path(server: int, client: int, port: int) -> str:
    """``data/vchan/<client>/<port>`` under the server's home: where a vchan is published."""
    return f"{vchan_dir(server)}/{client}/{port}"


def peer_name_path(domid: int, peer_name: str) -> str:
    """Where the toolstack tells a domain the domid of a peer the policy pairs it with, by the peer's name."""
    return f"/local/domain/{domid}/vchan/{peer_name}"


class VchanInterface:
    """``struct vchan_interface`` over a mapped page, its two rings and its flag bytes.

    ``page`` is the shared page and ``address`` its address in this process (for
    the atomic operations on the notify bytes). The orders are passed in, not
    read from the page: the server knows its own, and a client passes the ones it
    read once and checked (:func:`check_orders`), so a peer rewriting them later
    changes nothing. ``left_pages``/``right_pages`` are the separately granted
    pages of rings of order 12 and up (None for an in-page ring). ``left`` and
    ``right`` are :class:`ByteRing` views; the server reads ``left`` and writes
    ``right``, the client the reverse.
    """

    def __init__(
        self,
        page: memoryview,
        address: int,
        left_order: int,
        right_order: int,
        left_pages: memoryview | None = None,
        right_pages: memoryview | None = None,
    ) -> None:
        check_orders(left_order, right_order)
        self.page = page
        self.address = address
        self.left_order = left_order
        self.right_order = right_order
        self.left = self._ring("left", left_order, left_pages)
        self.right = self._ring("right", right_order, right_pages)

    @staticmethod
    def init(page: memoryview, left_order: int, right_order: int) -> None:
        """The server's fresh page: zeroed, the orders, ``cli_live`` waiting, ``srv_live`` connected.

        As ``init_gnt_srv``, the client's notify byte asks for a notify on the
        client's first write, so the server is woken by its first data.
        """
        page[:PAGE_SIZE] = bytes(PAGE_SIZE)
        u16 = page[:PAGE_SIZE].cast("H")
        u16[VCHAN_INTERFACE.offsetof("left_order") // 2] = left_order
        u16[VCHAN_INTERFACE.offsetof("right_order") // 2] = right_order
        u16.release()
        page[VCHAN_INTERFACE.offsetof("cli_live")] = VCHAN_WAITING
        page[VCHAN_INTERFACE.offsetof("srv_live")] = VCHAN_CONNECTED
        page[VCHAN_INTERFACE.offsetof("cli_notify")] = VCHAN_NOTIFY_WRITE

    @staticmethod
    def read_orders(page: memoryview) -> tuple[int, int]:
        """``left_order`` and ``right_order`` as the page holds them now (a client reads them once)."""
        u16 = page[:PAGE_SIZE].cast("H")
        try:
            return int(u16[VCHAN_INTERFACE.offsetof("left_order") // 2]), int(
                u16[VCHAN_INTERFACE.offsetof("right_order") // 2]
            )
        finally:
            u16.release()

    @staticmethod
    def read_grants(page: memoryview, left_order: int, right_order: int) -> list[int]:
        """The refs of the left ring's pages, then the right ring's (``grants[]``), read once."""
        count = ring_pages(left_order) + ring_pages(right_order)
        words = page[GRANTS_OFFSET : GRANTS_OFFSET + 4 * count].cast("I")
        try:
            return list(words)
        finally:
            words.release()

    def _ring(self, side: str, order: int, pages: memoryview | None) -> ByteRing:
        layout = VCHAN_INTERFACE
        cons, prod = layout.word(f"{side}_cons"), layout.word(f"{side}_prod")
        size = 1 << order
        if order < PAGE_SHIFT:
            return ByteRing(self.page, _in_page_offset(order), size, cons, prod)
        if pages is None or len(pages) < size:
            raise VchanError(f"the {side} ring of order {order} needs {ring_pages(order)} pages of its own")
        return ByteRing(self.page, 0, size, cons, prod, data=pages)

    def set_grants(self, refs: list[int]) -> None:
        """Fill ``grants[]`` (the server, before it publishes the page)."""
        words = self.page[GRANTS_OFFSET : GRANTS_OFFSET + 4 * len(refs)].cast("I")
        for index, ref in enumerate(refs):
            words[index] = ref
        words.release()

    def live(self, field: str) -> int:
        """``cli_live`` or ``srv_live``."""
        return int(self.page[VCHAN_INTERFACE.offsetof(field)])

    def set_live(self, field: str, value: int) -> None:
        self.page[VCHAN_INTERFACE.offsetof(field)] = value

    def notify_address(self, field: str) -> int:
        """The address of ``cli_notify`` or ``srv_notify``, for ``fetch_or8``/``fetch_and8``."""
        return self.address + VCHAN_INTERFACE.offsetof(field)

    def release(self) -> None:
        """Drop the views of the pages (before unmapping them)."""
        self.left.release()
        self.right.release()
