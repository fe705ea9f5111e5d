"""Atomic operations on shared memory, for the parts of the ABI that need them.

Xen's guests and hypervisor share memory with the CPU's atomic instructions:
``mb()`` (a full fence) in the ring macros of ``xen/include/public/io/ring.h`` and
``cmpxchg`` on grant-table flags (``xen/common/grant_table.c``). CPython has neither,
so xenlike reaches them through GCC's ``libatomic`` (always present where GCC's
runtime is, ``libatomic1`` on Debian) with ctypes.

What the rest of xenlike relies on, and where it holds:

* **Aligned 32-bit and 16-bit loads and stores are single instructions.** A
  ``memoryview.cast("I")`` (or ``"H"``) item assignment compiles to one ``mov`` on
  x86-64, so another process never sees a torn index. ``struct.pack_into`` does *not*
  give this (it zero-fills before writing), so shared indices never use it.
* **Store/store and load/load order is preserved** (x86-64 TSO). A producer that
  fills slots and then stores the index, and a consumer that loads the index and then
  reads the slots, need no barrier on x86-64. Each Python statement is an opaque C
  call, so the compiler cannot reorder them either.
* **Store→load order is not preserved**, even on x86-64: the consumer's "re-arm
  ``*_event``, then re-check the producer index" needs :func:`mb`, a locked
  instruction.

On weakly ordered CPUs (arm64, POWER) the second point fails and the rings would need
``wmb()``/``rmb()`` as well; xenlike supports x86-64 only and refuses to start
elsewhere (see :func:`check_platform`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["mb", "cmpxchg16", "cmpxchg32", "fetch_or8", "fetch_and8", "check_platform"]

_SEQ_CST = 5  # __ATOMIC_SEQ_CST

SUPPORTED_MACHINES = ("x86_64", "AMD64")


def check_platform() -> None:
    """Raise RuntimeError unless this CPU has the memory ordering the rings assume."""
    machine = platform.machine()
    if machine not in SUPPORTED_MACHINES:
        raise RuntimeError(f"xenlike's shared rings assume x86-64 (TSO) memory ordering; this machine is {machine!r}")


def _load_libatomic() -> ctypes.CDLL:
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        # PyDLL keeps the GIL across the call: a fence takes nanoseconds, and dropping the
        # GIL for it hands a guest's event-loop thread to the back of the GIL queue.
        return ctypes.PyDLL(name)
    except OSError as exc:  # pragma: no cover - depends on the host
        raise RuntimeError(
            "xenlike needs GCC's libatomic for fences and compare-and-swap on shared memory; "
            "install it (Debian/Ubuntu: apt-get install libatomic1)"
        ) from exc


_libatomic = _load_libatomic()

_fetch_add_4 = _libatomic.__atomic_fetch_add_4
_fetch_add_4.restype = ctypes.c_uint32
_fetch_add_4.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]

_fetch_or_1 = _libatomic.__atomic_fetch_or_1
_fetch_or_1.restype = ctypes.c_uint8
_fetch_or_1.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_int]

_fetch_and_1 = _libatomic.__atomic_fetch_and_1
_fetch_and_1.restype = ctypes.c_uint8
_fetch_and_1.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_int]

_cmpxchg_2 = _libatomic.__atomic_compare_exchange_2
_cmpxchg_2.restype = ctypes.c_bool
_cmpxchg_2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint16, ctypes.c_int, ctypes.c_int]

_cmpxchg_4 = _libatomic.__atomic_compare_exchange_4
_cmpxchg_4.restype = ctypes.c_bool
_cmpxchg_4.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_int]

# A private word for the fence: a locked add of zero to it is a full barrier on x86-64
# (what Linux's mb() does with "lock; addl $0,-4(%rsp)").
_fence_word = ctypes.c_uint32(0)
_fence_addr = ctypes.addressof(_fence_word)


def mb() -> None:
    """Full memory barrier (Xen's ``xen_mb()``): no load passes an earlier store."""
    _fetch_add_4(_fence_addr, 0, _SEQ_CST)


def cmpxchg16(address: int, old: int, new: int) -> int:
    """Atomically replace the u16 at ``address`` with ``new`` if it equals ``old``.

    Returns the value found there, as Xen's ``cmpxchg()`` does: the swap happened
    iff the result equals ``old``. The address must be 2-byte aligned.
    """
    expected = ctypes.c_uint16(old)
    _cmpxchg_2(address, ctypes.byref(expected), new, _SEQ_CST, _SEQ_CST)
    return expected.value


def cmpxchg32(address: int, old: int, new: int) -> int:
    """As :func:`cmpxchg16`, on an aligned u32."""
    expected = ctypes.c_uint32(old)
    _cmpxchg_4(address, ctypes.byref(expected), new, _SEQ_CST, _SEQ_CST)
    return expected.value


def fetch_or8(address: int, bits: int) -> int:
    """Atomically OR ``bits`` into the byte at ``address``; returns its old value (``__sync_fetch_and_or``).

    A full barrier as well, as every locked instruction on x86-64 is.
    """
    return int(_fetch_or_1(address, bits & 0xFF, _SEQ_CST))


def fetch_and8(address: int, bits: int) -> int:
    """Atomically AND the byte at ``address`` with ``bits``; returns its old value (``__sync_fetch_and_and``)."""
    return int(_fetch_and_1(address, bits & 0xFF, _SEQ_CST))
