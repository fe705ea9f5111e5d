"""TAP devices and network namespaces: the Linux net devices a vif's two ends drive.

A vif has a Linux net device at each end, as in Xen: ``eth<devid>`` in the
guest (what netfront registers with the guest kernel's stack) and
``vif<domid>.<devid>`` in dom0's back-end namespace (what netback registers,
joined to a bridge). Here both are TAP devices (``Documentation/networking/tuntap.rst``):
the kernel's stack on one side, a file descriptor on the other that carries
one Ethernet frame per ``read``/``write``. Every frame is preceded by a
``struct virtio_net_hdr`` (``IFF_VNET_HDR``), which carries what netif's
``NETTXF_csum_blank`` and GSO extra info carry on the rings: a partial checksum
to finish and the segmentation a large TCP frame still needs.

Namespaces belong to threads (``setns(2)`` moves the calling thread only), so
:func:`in_netns` switches the calling thread into a namespace and back; a
socket or a TAP opened meanwhile stays in the namespace it was made in.

Needs Linux's tun driver (``/dev/net/tun``), bridges and network namespaces,
and ``CAP_NET_ADMIN`` (root) to create devices; :func:`probe` says what is missing.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "IFF_NO_PI",
    "IFF_TAP",
    "IFF_VNET_HDR",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "VIRTIO_NET_HDR",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "NetdevError",
    "in_netns",
    "netns_fd",
    "new_netns",
    "open_tap",
    "probe",
    "set_offload",
    "setns",
]

TUN_PATH = "/dev/net/tun"
CLONE_NEWNET = 0x40000000

# include/uapi/linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFNAMSIZ = 16

# include/uapi/linux/virtio_net.h: struct virtio_net_hdr, little-endian on x86 (the TAP's default).
VIRTIO_NET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


class NetdevError(OSError):
    """A net device or namespace step failed; the message names the step and the device."""


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise NetdevError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """``setns(2)`` of the calling thread (``fd``: a namespace file or a pidfd)."""
    if _libc.setns(fd, nstype) != 0:
        _raise("setns")


def netns_fd() -> int:
    """An fd of the calling thread's network namespace (``/proc/thread-self/ns/net``), close-on-exec."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``fd``, then return it where it was."""
    home = netns_fd()
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def new_netns() -> int:
    """A new, empty network namespace (only a down ``lo``); returns its fd. The calling thread stays where it was.

    The namespace lives while the fd, a process in it or a socket made in it
    does: nothing names it, so nothing outlives its last holder.
    """
    home = netns_fd()
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            _raise("unshare(CLONE_NEWNET)")
        try:
            return netns_fd()
        finally:
            setns(home)
    finally:
        os.close(home)


def open_tap(name: str, *, vnet_hdr: bool = True) -> tuple[int, str]:
    """Create TAP device ``name`` in the calling thread's namespace; returns (fd, the kernel's name).

    ``IFF_NO_PI`` (frames only), ``IFF_VNET_HDR`` with the 10-byte header
    unless ``vnet_hdr`` is False. The device is not persistent: it goes with
    the last fd. Needs ``CAP_NET_ADMIN``.
    """
    if not 0 < len(name.encode()) < IFNAMSIZ:
        raise NetdevError(22, f"TAP name {name!r}: 1 to {IFNAMSIZ - 1} bytes")
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = bytearray(struct.pack("16sH22x", name.encode(), flags))
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR.size))
    except OSError as exc:
        os.close(fd)
        raise NetdevError(exc.errno or 0, f"TAP {name}: {exc.strerror}") from None
    return fd, bytes(ifr[:IFNAMSIZ]).rstrip(b"\0").decode()


def set_offload(fd: int, flags: int) -> None:
    """``TUNSETOFFLOAD``: which ``TUN_F_*`` offloads the reader of ``fd`` accepts (by value, as the kernel takes it).

    With ``TUN_F_CSUM`` the kernel may hand over frames whose checksum is
    still to be finished (``VIRTIO_NET_HDR_F_NEEDS_CSUM``); with TSO4/TSO6 also
    TCP frames up to 64 KiB that must still be segmented.
    """
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


def probe() -> str | None:
    """None if this process can create TAP devices and network namespaces, else what is missing, in one phrase."""
    if not os.path.exists(TUN_PATH):
        return f"{TUN_PATH} (Linux's tun driver: modprobe tun)"
    if os.geteuid() != 0:
        return "root (CAP_NET_ADMIN, to create TAP devices and bridges)"
    try:
        fd = new_netns()
    except OSError as exc:
        return f"network namespaces ({exc.strerror})"
    try:
        with in_netns(fd):
            tap, _ = open_tap("xlprobe0")
            os.close(tap)
    except OSError as exc:
        return f"TAP devices ({exc.strerror})"
    finally:
        os.close(fd)
    return None
