"""The console page shared by a domain and xenconsoled (``xen/include/public/io/console.h``).

One page per domain, frame ``start_info.console_pfn``, granted as entry 0
(``GNTTAB_RESERVED_CONSOLE``) and signalled on ``start_info.console_evtchn``::

    struct xencons_interface {                byte offset
        char in[1024];                        0        xenconsoled -> guest (keys)
        char out[2048];                       1024     guest -> xenconsoled (output)
        XENCONS_RING_IDX in_cons, in_prod;    3072, 3076
        XENCONS_RING_IDX out_cons, out_prod;  3080, 3084
        uint8_t connection;                   3088     XENCONSOLE_CONNECTED / _DISCONNECTED
    };

Indices are free-running uint32; byte x of a ring is at x mod its size
(``MASK_XENCONS_IDX``). Whoever moves an index signals the event channel.
xenconsoled attaches when the domain is built and never sets ``connection``,
so the field is described here and left at 0 (``XENCONSOLE_CONNECTED``).
"""

from __future__ import annotations

from xenlike.public.ring import ByteRing, PageLayout

__all__ = [
    "XENCONS_IN_SIZE",
    "XENCONS_OUT_SIZE",
    "XENCONS_INTERFACE",
    "XENCONSOLE_CONNECTED",
    "XENCONSOLE_DISCONNECTED",
    "ConsoleInterface",
]

XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048

#: ``struct xencons_interface``.
XENCONS_INTERFACE = PageLayout(
    "xencons_interface",
    [
        ("in", f"{XENCONS_IN_SIZE}s"),
        ("out", f"{XENCONS_OUT_SIZE}s"),
        ("in_cons", "I"),
        ("in_prod", "I"),
        ("out_cons", "I"),
        ("out_prod", "I"),
        ("connection", "B"),
    ],
)

#: ``connection`` values: whether the back end will service and empty the rings.
XENCONSOLE_CONNECTED = 0
XENCONSOLE_DISCONNECTED = 1


class ConsoleInterface:
    """``struct xencons_interface`` over a mapped page: its two byte rings.

    :attr:`input` (``in``) carries keyboard bytes xenconsoled->guest, :attr:`output`
    (``out``) the guest's output to xenconsoled. Both ends drive them through
    :class:`xenlike.kernel.byte_channel.ByteChannel`.
    """

    def __init__(self, page: memoryview) -> None:
        layout = XENCONS_INTERFACE
        self.input = ByteRing(
            page, layout.offsetof("in"), XENCONS_IN_SIZE, layout.word("in_cons"), layout.word("in_prod")
        )
        self.output = ByteRing(
            page, layout.offsetof("out"), XENCONS_OUT_SIZE, layout.word("out_cons"), layout.word("out_prod")
        )

    def release(self) -> None:
        """Drop the views of the page (before unmapping it)."""
        self.input.release()
        self.output.release()
