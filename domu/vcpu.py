"""Secondary vCPUs: a guest's vCPUs 1..N-1 as processes the hypervisor schedules.

A PV guest brings its secondary vCPUs up with ``VCPUOP_initialise`` and
``VCPUOP_up`` (``xen/include/public/vcpu.h``); Linux's ``xen_cpu_up`` does it
for each CPU it onlines. In xenlike a vCPU is a process, so the guest kernel
forks one process per secondary vCPU while it is still single-threaded, and
reports each to the hypervisor with the ``vcpu_op`` hypercall (``cmd = "up"``);
the hypervisor accepts only children of the domain's vCPU 0 in its process group.

A secondary vCPU shares the domain's memory (the same ``MAP_SHARED`` mapping) and
runs functions the workload sends it, one at a time, in order. It has no event
channels and no xenstore of its own: like an application thread on another CPU,
it computes and hands results back. Between calls it blocks on its socket, so
the scheduler sees it idle.

A function travels by name: an importable ``module.qualname``, or a function of
the workload's own module (which a file workload's is not importable as).
Arguments and results are pickled.
"""

from __future__ import annotations

import collections
import ctypes
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["Vcpu", "VcpuCall", "VcpuError", "WorkloadGlobals", "fork_vcpu", "fork_vcpus"]

_LENGTH = struct.Struct("<I")
_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15
_libc = ctypes.CDLL(None, use_errno=True)


class VcpuError(Exception):
    """A function run on a secondary vCPU raised; the message carries its traceback."""


class WorkloadGlobals:
    """The names of the workload's module, for functions sent by name.

    vCPU 0 binds it to the module it loaded; a secondary vCPU, forked before the
    workload was loaded, loads the same workload itself on its first call.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._names: dict[str, Any] | None = None

    def bind(self, names: dict[str, Any]) -> None:
        self._names = names

    def get(self, name: str) -> Any:
        if self._names is None:
            from .workload import load_workload

            self._names = getattr(load_workload(self.spec), "__globals__", {})
        return self._names.get(name)


def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the other end of the vCPU channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> Any:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    return pickle.loads(_recv_exact(sock, size))


class VcpuCall:
    """A function sent to a secondary vCPU; :meth:`result` waits for what it returned."""

    def __init__(self, vcpu: Vcpu) -> None:
        self._vcpu = vcpu
        self._done = False
        self._value: Any = None
        self._error: str | None = None
        self._lost: str | None = None  # the channel ended before the answer came

    def done(self) -> bool:
        """Whether the outcome is in (reads any answer that arrived, never waits)."""
        if not self._done:
            self._vcpu._collect(block=False)
        return self._done

    def result(self) -> Any:
        """Wait for the function's return value; raises VcpuError if it raised.

        EOFError if the vCPU's process died, or the vCPU went offline, before answering.
        """
        while not self._done:
            self._vcpu._collect(block=True)
        if self._lost is not None:
            raise EOFError(self._lost)
        if self._error is not None:
            raise VcpuError(self._error)
        return self._value

    def _finish(self, ok: bool, value: Any) -> None:
        if ok:
            self._value = value
        else:
            self._error = value
        self._done = True

    def _lose(self, why: str) -> None:
        self._lost = why
        self._done = True


class Vcpu:
    """vCPU 1..N-1 as the workload sees it (``ctx.vcpus``): ``index`` is its number, ``pid`` its process.

    Calls run one at a time, in the order they were sent; any thread may send
    them, wait for them or close the vCPU. A function travels by name (see the
    module), its arguments and result pickled.

    Sending holds ``_lock``; reading answers holds ``_read_lock`` (one reader at
    a time, so a blocking ``result()`` in one thread does not make another's
    ``done()`` wait). Bytes read are kept in ``_received`` until a whole answer is
    there: a non-blocking look that finds half an answer leaves it for the next.
    """

    def __init__(self, index: int, pid: int, sock: socket.socket, workload_globals: WorkloadGlobals | None) -> None:
        self.index = index
        self.pid = pid
        self._sock = sock
        self._globals = workload_globals
        self._pending: collections.deque[VcpuCall] = collections.deque()
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._received = bytearray()
        self._closed: str | None = None  # why the channel ended, once it has

    def submit(self, function: Callable, *args: Any, **kwargs: Any) -> VcpuCall:
        """Run ``function(*args, **kwargs)`` on this vCPU after the calls already sent.

        Returns at once. ValueError for a function that is not module-level (a
        lambda, a nested function); pickle's error for arguments it cannot pickle;
        EOFError once the vCPU is offline.
        """
        call = VcpuCall(self)
        name = _name_of(function, self._globals)
        with self._lock:
            if self._closed is not None:
                raise EOFError(self._closed)
            try:
                _send(self._sock, (name, args, kwargs))
            except OSError as exc:  # its process is gone
                raise EOFError(f"vCPU {self.index} cannot take calls: {exc.strerror or exc}") from None
            self._pending.append(call)
        return call

    def call(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on this vCPU and wait for its result."""
        return self.submit(function, *args, **kwargs).result()

    def _collect(self, block: bool) -> None:
        """Complete the oldest pending call if its answer is in (``block``: wait for it).

        Non-blocking, this returns at once while another thread is reading; blocking,
        it waits for that thread, whose answer may be the one its caller wants.
        """
        if not self._read_lock.acquire(blocking=block):
            return
        try:
            with self._lock:
                if not self._pending:
                    return
            answer = self._read_answer(block)
            if answer is not None:
                with self._lock:
                    call = self._pending.popleft()
                call._finish(*answer)
        finally:
            self._read_lock.release()

    def _read_answer(self, block: bool) -> tuple[bool, Any] | None:
        """One whole answer off the channel (``_read_lock`` held); None if not all of it is there and not ``block``."""
        received = self._received
        while True:
            if len(received) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(received)
                if len(received) >= _LENGTH.size + size:
                    answer = pickle.loads(received[_LENGTH.size : _LENGTH.size + size])
                    del received[: _LENGTH.size + size]
                    return answer
            if self._closed is not None:
                self._lose_pending(self._closed)
                return None
            try:
                chunk = self._sock.recv(1 << 16, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except OSError:  # ECONNRESET: it died with calls of ours unread
                chunk = b""
            if not chunk:
                self._lose_pending(self._closed or f"vCPU {self.index}'s process ended before answering")
                return None
            received += chunk

    def _lose_pending(self, why: str) -> None:
        """The channel ended: every call still pending fails with EOFError (``_read_lock`` held)."""
        with self._lock:
            if self._closed is None:
                self._closed = why
            lost, self._pending = self._pending, collections.deque()
        for call in lost:
            call._lose(why)

    def close(self) -> None:
        """Close the channel: the vCPU's process exits; calls still pending fail with EOFError.

        Any thread may call it, also while another waits in ``result()``: the
        socket is shut down first, which ends that wait, and closed once no thread
        reads it.
        """
        with self._lock:
            if self._closed is not None and self._sock.fileno() < 0:
                return
            self._closed = f"vCPU {self.index} went offline before answering"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # its process had already gone
        with self._read_lock:
            self._lose_pending(self._closed)
            self._sock.close()


def _name_of(function: Callable, workload_globals: WorkloadGlobals | None) -> tuple[str, str]:
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"{function!r} cannot run on another vCPU: only module-level functions travel")
    if workload_globals is not None and "." not in qualname and workload_globals.get(qualname) is function:
        return ("workload", qualname)
    return (module, qualname)


def _resolve(name: tuple[str, str], workload_globals: WorkloadGlobals | None) -> Callable:
    module, qualname = name
    target: Any
    if module == "workload":
        target = workload_globals.get(qualname) if workload_globals is not None else None
        if target is None:
            raise LookupError(f"the workload has no function {qualname!r}")
        return target
    __import__(module)
    target = sys.modules[module]
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _serve(sock: socket.socket, workload_globals: WorkloadGlobals | None) -> None:
    """A secondary vCPU's life: run what arrives, answer, until vCPU 0 goes away."""
    while True:
        try:
            name, args, kwargs = _recv(sock)
        except (EOFError, OSError):
            return
        try:
            result = (True, _resolve(name, workload_globals)(*args, **kwargs))
        except BaseException:
            result = (False, traceback.format_exc())
        try:
            _send(sock, result)
        except pickle.PicklingError:
            _send(sock, (False, f"the result of {name[0]}.{name[1]} cannot be pickled"))
        except OSError:
            return


def fork_vcpus(count: int, process_name: Callable[[int], str], workload_globals: WorkloadGlobals | None) -> list[Vcpu]:
    """Fork vCPUs 1..count-1 at boot, while the kernel is still single-threaded (see :func:`fork_vcpu`)."""
    return [fork_vcpu(index, process_name, workload_globals) for index in range(1, count)]


def fork_vcpu(index: int, process_name: Callable[[int], str], workload_globals: WorkloadGlobals | None) -> Vcpu:
    """Fork vCPU ``index``: at boot, or when ``vcpu-set`` brings it online (``domu/cpu_hotplug.py``).

    The child closes every file descriptor but its own channel (it keeps the
    memory mapping, which needs none), dies with vCPU 0 (``PR_SET_PDEATHSIG``),
    takes the name ``process_name(index)`` and serves calls. Forked while other
    threads run, it touches nothing of theirs: it only reads its channel and runs
    what arrives, with the workload's names already bound.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ours.close()
            os.closerange(3, theirs.fileno())
            os.closerange(theirs.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(process_name(index).encode()[:15]), 0, 0, 0)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _serve(theirs, workload_globals)
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    theirs.close()
    return Vcpu(index, pid, ours, workload_globals)
