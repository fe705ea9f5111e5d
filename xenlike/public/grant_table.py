"""Grant tables' ABI, version 1 (``xen/include/public/grant_table.h``).

A domain shares one of its frames with another domain by writing a grant entry
into its own grant table, which lives in frames of its own memory:

    struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; };  // 8 bytes

``flags`` and ``domid`` together are one aligned 32-bit word (Xen's ``union
grant_combo``): the hypervisor marks an entry in use by one compare-and-swap on
that word, so the granter's revoke (a compare-and-swap on ``flags``) can never
succeed while the grant is mapped. The granter's side is
:mod:`xenlike.kernel.gnttab`, the hypervisor's checks and maptrack are
:mod:`xenlike.hypervisor.grant_table`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "GTF_invalid",
    "GTF_permit_access",
    "GTF_accept_transfer",
    "GTF_transitive",
    "GTF_type_mask",
    "GTF_readonly",
    "GTF_reading",
    "GTF_writing",
    "GNTST",
    "GNTTAB_RESERVED_CONSOLE",
    "GNTTAB_RESERVED_XENSTORE",
    "GNTTAB_NR_RESERVED_ENTRIES",
    "GRANT_ENTRY",
    "GRANT_ENTRY_SIZE",
    "GRANT_ENTRIES_PER_FRAME",
    "GRANT_COMBO_FLAGS_MASK",
    "GRANT_COMBO_DOMID_SHIFT",
    "DEFAULT_MAX_GRANT_FRAMES",
    "GrantEntry",
    "GrantError",
]

# grant_entry_v1.flags: the type in bits 0-1, then sub-flags.
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2  # set by the granter: the peer may only read
GTF_reading = 1 << 3  # set by the hypervisor while the peer has the frame mapped
GTF_writing = 1 << 4  # ... mapped writable

GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
GNTTAB_NR_RESERVED_ENTRIES = 8

GRANT_ENTRY = struct.Struct("<HHI")  # flags, domid, frame
GRANT_ENTRY_SIZE = GRANT_ENTRY.size
GRANT_ENTRIES_PER_FRAME = PAGE_SIZE // GRANT_ENTRY_SIZE
DEFAULT_MAX_GRANT_FRAMES = 64  # Xen's gnttab_max_frames default

# The flags+domid word of an entry (union grant_combo): flags in the low half, domid in the high.
GRANT_COMBO_FLAGS_MASK = 0xFFFF
GRANT_COMBO_DOMID_SHIFT = 16


class GNTST:
    """``GNTST_*`` status codes of grant-table operations."""

    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13

    @classmethod
    def name(cls, status: int) -> str:
        """``GNTST_okay`` for 0, and so on."""
        for attr, value in vars(cls).items():
            if not attr.startswith("_") and value == status and isinstance(value, int):
                return f"GNTST_{attr}"
        return f"GNTST({status})"


class GrantError(Exception):
    """A grant operation refused, with Xen's GNTST status and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{GNTST.name(status)}: {message}")
        self.status = status


@dataclass(frozen=True)
class GrantEntry:
    """A decoded ``grant_entry_v1``."""

    flags: int
    domid: int
    frame: int

    @property
    def type(self) -> int:
        return self.flags & GTF_type_mask

    @property
    def readonly(self) -> bool:
        return bool(self.flags & GTF_readonly)

    @property
    def in_use(self) -> bool:
        return bool(self.flags & (GTF_reading | GTF_writing))
