"""The seccomp-BPF builder, its installer and the domU policy, on the real kernel (x86-64 Linux).

A filter cannot be removed, so each kernel test forks a child that installs
one, makes its calls, reports each result over a pipe as it gets it and leaves
with ``os._exit``; the parent checks the results and how the child ended (a
``KILL_PROCESS`` shows as death by ``SIGSYS``). Every child is reaped, on a
deadline, whatever happens. Pure tests read the emitted ``struct sock_filter``
program, or run it with :func:`seccomp.evaluate`, against an independent model
of the rules.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenlike.kernel import seccomp
from xenlike.kernel.seccomp import (
    ALLOW,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    BPF_MAXINSNS,
    KILL_PROCESS,
    SYSCALLS,
    X32_SYSCALL_BIT,
    Arg,
    Filter,
    Insn,
    SeccompError,
    arg_any_set,
    arg_eq,
    arg_masked_eq,
    arg_ne,
    arg_none_set,
    evaluate,
    guest_policy,
    install,
    ret_errno,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not seccomp.supported(), reason="needs seccomp on x86-64 Linux"
)

U64 = (1 << 64) - 1
CHILD_DEADLINE = 15.0
SIGCHLD = 17
# PTRACE_SEIZE, unlike PTRACE_ATTACH, does not stop its target: the probe aimed at
# the test runner itself leaves it running even if a filter failed to deny it.
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
EPERM = ret_errno(errno.EPERM)

# Syscalls that ignore their arguments and that neither CPython nor this file's
# child code makes on its own once a filter is in: harmless to deny or kill.
POOL = ("getppid", "getuid", "getgid", "geteuid", "getegid", "sched_yield", "getpgrp")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def sys_call(syscall: int | str, *args: int) -> tuple[int, int]:
    """(return value, errno or 0) of a raw syscall with 64-bit arguments."""
    nr = SYSCALLS[syscall] if isinstance(syscall, str) else syscall
    ctypes.set_errno(0)
    result = _syscall(ctypes.c_long(nr), *(ctypes.c_ulong(arg & U64) for arg in args))
    return result, (ctypes.get_errno() if result == -1 else 0)


# --- forked children ---


class Reporter:
    """The child's end of the pipe: each record goes out at once, length-prefixed, so a kill loses none."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, record: Any) -> None:
        data = pickle.dumps(record)
        view = memoryview(struct.pack("<I", len(data)) + data)
        while view:
            view = view[os.write(self.fd, view) :]


def _child(body: Callable[[Reporter], None], read_fd: int, write_fd: int) -> None:
    code = 0
    try:
        os.close(read_fd)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGSYS death must not write a core file
        body(Reporter(write_fd))
    except BaseException:
        code = 70
        try:
            Reporter(write_fd)(("child raised", traceback.format_exc()))
        except BaseException:
            pass
    finally:
        os._exit(code)


def _read_until_eof(fd: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError("the child neither finished nor closed its pipe in time")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _wait(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"child {pid} did not exit in time")
        time.sleep(0.005)


def _records(data: bytes) -> list[Any]:
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        records.append(pickle.loads(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return records


def in_child(body: Callable[[Reporter], None]) -> tuple[int, list[Any]]:
    """Run ``body(report)`` in a forked child; (wait status, records reported). Reaps it whatever happens."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(body, read_fd, write_fd)
    os.close(write_fd)
    status: int | None = None
    deadline = time.monotonic() + CHILD_DEADLINE
    try:
        data = _read_until_eof(read_fd, deadline)
        status = _wait(pid, deadline)
    finally:
        os.close(read_fd)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    records = _records(data)
    for record in records:
        if isinstance(record, tuple) and record and record[0] == "child raised":
            pytest.fail(f"the child raised:\n{record[1]}")
    return status, records


def killed_by_sigsys(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def exited_cleanly(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# --- syscall numbers ---


def _header_numbers() -> dict[str, int]:
    for path in (Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), Path("/usr/include/asm/unistd_64.h")):
        if path.exists():
            found = re.findall(r"#define __NR_(\w+) (\d+)", path.read_text())
            return {name: int(number) for name, number in found}
    return {}


def test_syscall_numbers_match_the_installed_kernel_headers() -> None:
    numbers = _header_numbers()
    if not numbers:
        pytest.skip("no uapi headers installed")
    known = {name: nr for name, nr in SYSCALLS.items() if name in numbers}
    assert len(known) >= len(SYSCALLS) - 2  # headers older than the kernel may lack the newest
    assert known == {name: numbers[name] for name in known}


def test_syscall_numbers_do_what_their_names_say() -> None:
    assert sys_call("getppid") == (os.getppid(), 0)
    assert sys_call("getpid") == (os.getpid(), 0)
    assert sys_call("getuid") == (os.getuid(), 0)
    assert sys_call("getegid") == (os.getegid(), 0)
    assert sys_call("getpgrp") == (os.getpgrp(), 0)
    assert sys_call("gettid") == (threading.get_native_id(), 0)


# --- the emitted program ---


def test_the_architecture_is_checked_first_and_a_foreign_one_gets_the_foreign_action() -> None:
    program = Filter(ALLOW, foreign=ret_errno(errno.ENOEXEC)).add("getppid", EPERM).instructions()
    assert program[0] == Insn(0x20, 0, 0, 4)  # LD|W|ABS seccomp_data.arch
    assert program[1] == Insn(0x15, 1, 0, AUDIT_ARCH_X86_64)  # JEQ: native skips the RET
    assert program[2] == Insn(0x06, 0, 0, ret_errno(errno.ENOEXEC))
    for arch in (AUDIT_ARCH_I386, 0, 0x40000028):
        for nr in (SYSCALLS["getppid"], SYSCALLS["getpid"], 20):
            assert evaluate(program, nr, arch=arch) == ret_errno(errno.ENOEXEC)
    assert evaluate(program, SYSCALLS["getpid"]) == ALLOW


def test_x32_numbers_are_rejected_before_any_rule() -> None:
    program = Filter(ALLOW).add("getppid", ALLOW).instructions()
    assert program[3] == Insn(0x20, 0, 0, 0)  # LD seccomp_data.nr
    assert program[4] == Insn(0x35, 0, 1, X32_SYSCALL_BIT)  # JGE 0x40000000
    assert program[5] == Insn(0x06, 0, 0, KILL_PROCESS)
    for nr in (SYSCALLS["getppid"], SYSCALLS["ptrace"], 0, 512, 0x3FFFFFFF, 0x7FFFFFFF, -1):
        assert evaluate(program, nr | X32_SYSCALL_BIT) == KILL_PROCESS
    assert evaluate(program, 0x3FFFFFFF) == ALLOW


def test_a_program_of_bpf_maxinsns_builds_and_one_instruction_more_is_refused() -> None:
    # 6 header + 1 final RET, 2 per unconditional syscall, 5 for one with a 32-bit condition.
    at_limit = Filter(ALLOW).add(1000, EPERM, arg_eq(0, 7, width=32))
    for nr in range(2000, 2000 + 2042):
        at_limit.add(nr, EPERM)
    assert len(at_limit.instructions()) == BPF_MAXINSNS
    at_limit.add(9999, EPERM)
    with pytest.raises(ValueError, match="BPF_MAXINSNS"):
        at_limit.instructions()


def _long_block_filter(rules: int) -> Filter:
    """getppid with ``rules`` 64-bit conditioned rules (5 instructions each), then getuid."""
    policy = Filter(ALLOW)
    for i in range(rules):
        policy.add("getppid", ret_errno(100 + i), arg_eq(0, (i + 1) << 32 | i))
    return policy.add("getuid", ret_errno(99))


def test_a_block_longer_than_255_instructions_is_skipped_with_bpf_ja() -> None:
    program = _long_block_filter(70).instructions()
    dispatch = program[6:8]
    assert dispatch[0] == Insn(0x15, 1, 0, SYSCALLS["getppid"])
    assert dispatch[1].code == 0x05 and dispatch[1].k > 255  # BPF_JMP|BPF_JA over the block
    assert all(insn.jt <= 255 and insn.jf <= 255 for insn in program)
    for i in (0, 1, 50, 69):
        assert evaluate(program, SYSCALLS["getppid"], [(i + 1) << 32 | i]) == ret_errno(100 + i)
    assert evaluate(program, SYSCALLS["getppid"], [5]) == ALLOW  # right low word, wrong high word
    assert evaluate(program, SYSCALLS["getuid"]) == ret_errno(99)
    assert evaluate(program, SYSCALLS["getgid"]) == ALLOW
    short = _long_block_filter(3).instructions()
    assert short[6].code == 0x15 and short[7].code != 0x05


def test_the_kernel_accepts_the_largest_program_and_follows_long_jumps() -> None:
    at_limit = Filter(ALLOW).add(1000, EPERM, arg_eq(0, 7, width=32))
    for nr in range(2000, 2000 + 2041):
        at_limit.add(nr, EPERM)
    at_limit.add("getgid", ret_errno(77))
    assert len(at_limit.instructions()) == BPF_MAXINSNS
    long_jumps = _long_block_filter(70).build()

    def body(report: Reporter) -> None:
        install(at_limit.build())
        report(sys_call("getgid"))
        install(long_jumps)
        report(sys_call("getppid", 51 << 32 | 50))
        report(sys_call("getppid", 50))
        report(sys_call("getuid"))

    status, records = in_child(body)
    assert exited_cleanly(status)
    assert records[0] == (-1, 77)
    assert records[1] == (-1, 150)
    assert records[2][1] == 0
    assert records[3] == (-1, 99)


def test_bad_rules_and_programs_are_refused_before_the_kernel_sees_them() -> None:
    with pytest.raises(ValueError, match="0..5"):
        Arg(6, 1, 0)
    with pytest.raises(ValueError, match="non-zero"):
        Arg(0, 0, 0)
    with pytest.raises(ValueError, match="outside mask"):
        arg_masked_eq(0, 0xF0, 0x0F)
    with pytest.raises(ValueError, match="32 or 64"):
        arg_eq(0, 1, width=16)
    with pytest.raises(ValueError, match="no x86-64 number"):
        Filter().add("no_such_call", EPERM)
    with pytest.raises(ValueError, match="native"):
        Filter().add(X32_SYSCALL_BIT | 39, EPERM)
    with pytest.raises(ValueError, match="0..4095"):
        ret_errno(4096)
    with pytest.raises(ValueError, match="USER_NOTIF"):
        Filter(default=0x7FC00000)
    with pytest.raises(ValueError, match="no data"):
        Filter().add("getppid", ALLOW | 1)
    too_many = Filter().add("getppid", EPERM, *(arg_eq(i % 6, i << 32 | i) for i in range(100)))
    with pytest.raises(ValueError, match="too many conditions"):
        too_many.instructions()
    for program in (b"", b"\x06\x00\x00\x00\x00\x00\xff", b"\x00" * 8 * (BPF_MAXINSNS + 1)):
        with pytest.raises(ValueError, match="instructions"):
            install(program)


def test_action_names() -> None:
    assert seccomp.action_name(EPERM) == "ERRNO(EPERM)"
    assert seccomp.action_name(ret_errno(4000)) == "ERRNO(4000)"
    assert seccomp.action_name(KILL_PROCESS) == "KILL_PROCESS"
    assert seccomp.action_name(ALLOW) == "ALLOW"


def test_a_32_bit_condition_ignores_the_upper_half_a_64_bit_one_does_not() -> None:
    program = Filter(ALLOW).add("ioctl", EPERM, arg_eq(1, 0x5412, width=32)).add("getppid", EPERM, arg_eq(0, 1))
    ioctl, getppid = SYSCALLS["ioctl"], SYSCALLS["getppid"]
    assert evaluate(program.build(), ioctl, [0, 0x5412]) == EPERM
    assert evaluate(program.build(), ioctl, [0, 0xDEAD_0000_5412]) == EPERM
    assert evaluate(program.build(), getppid, [1]) == EPERM
    assert evaluate(program.build(), getppid, [1 << 32 | 1]) == ALLOW


# --- the rules against an independent model, in Python and in the kernel ---

CONDITION_KINDS = ("eq64", "eq32", "ne64", "ne32", "any_set", "none_set", "masked_eq")
interesting = st.one_of(
    st.sampled_from([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 32) | 1, U64, U64 - 1]),
    st.integers(0, U64),
)


@st.composite
def conditions(draw: st.DrawFn) -> tuple[str, int, int, int]:
    """(kind, index, a, b): a condition as plain data, turned into an :class:`Arg` and into the model."""
    kind = draw(st.sampled_from(CONDITION_KINDS))
    index = draw(st.integers(0, 5))
    a = draw(interesting.filter(bool)) if kind in ("any_set", "none_set", "masked_eq") else draw(interesting)
    b = draw(interesting) & a if kind == "masked_eq" else 0
    return kind, index, a, b


def to_arg(condition: tuple[str, int, int, int]) -> Arg:
    kind, index, a, b = condition
    return {
        "eq64": lambda: arg_eq(index, a),
        "eq32": lambda: arg_eq(index, a, width=32),
        "ne64": lambda: arg_ne(index, a),
        "ne32": lambda: arg_ne(index, a, width=32),
        "any_set": lambda: arg_any_set(index, a),
        "none_set": lambda: arg_none_set(index, a),
        "masked_eq": lambda: arg_masked_eq(index, a, b),
    }[kind]()


def model_holds(condition: tuple[str, int, int, int], args: Sequence[int]) -> bool:
    kind, index, a, b = condition
    value = args[index]
    low = (1 << 32) - 1
    return {
        "eq64": value == a,
        "eq32": value & low == a & low,
        "ne64": value != a,
        "ne32": value & low != a & low,
        "any_set": value & a != 0,
        "none_set": value & a == 0,
        "masked_eq": value & a == b,
    }[kind]


Spec = list[tuple[str, int, list[tuple[str, int, int, int]]]]


def model_action(spec: Spec, name: str, args: Sequence[int]) -> int:
    """First rule of the syscall whose conditions all hold, else ALLOW."""
    for rule_name, action, conds in spec:
        if rule_name == name and all(model_holds(cond, args) for cond in conds):
            return action
    return ALLOW


def build(spec: Spec) -> Filter:
    policy = Filter(ALLOW)
    for name, action, conds in spec:
        policy.add(name, action, *map(to_arg, conds))
    return policy


actions = st.one_of(st.just(ALLOW), st.just(KILL_PROCESS), st.integers(1, 4095).map(ret_errno))
rule_specs = st.lists(
    st.tuples(st.sampled_from(POOL), actions, st.lists(conditions(), max_size=3)),
    max_size=12,
)


@st.composite
def calls(draw: st.DrawFn, spec: Spec) -> list[tuple[str, list[int]]]:
    """Calls whose arguments often meet the spec's conditions (and often miss them by a bit)."""
    near = [0, U64]
    for _, _, conds in spec:
        for _, _, a, b in conds:
            near += [a, b, a ^ 1, a ^ (1 << 40), a & 0xFFFFFFFF, a | (1 << 63)]
    argument = st.one_of(st.sampled_from(near), st.integers(0, U64))
    return draw(st.lists(st.tuples(st.sampled_from(POOL), st.lists(argument, min_size=6, max_size=6)), max_size=8))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), spec=st.lists(st.tuples(st.sampled_from(POOL), actions, st.lists(conditions(), max_size=4))))
def test_the_program_decides_as_the_rules_say(data: st.DataObject, spec: Spec) -> None:
    policy = build(spec)
    program = policy.instructions()
    for name, args in data.draw(calls(spec)):
        expected = model_action(spec, name, args)
        assert evaluate(program, SYSCALLS[name], args) == expected
        assert policy.action_for(SYSCALLS[name], args) == expected


def _run_calls(program: bytes, planned: list[tuple[str, list[int]]]) -> Callable[[Reporter], None]:
    def body(report: Reporter) -> None:
        install(program)
        for name, args in planned:
            report(sys_call(name, *args))

    return body


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), spec=rule_specs)
def test_the_kernel_decides_as_the_rules_say(data: st.DataObject, spec: Spec) -> None:
    planned = data.draw(calls(spec))
    status, records = in_child(_run_calls(build(spec).build(), planned))
    expected_kill = None
    for position, (name, args) in enumerate(planned):
        expected = model_action(spec, name, args)
        if expected == KILL_PROCESS:
            expected_kill = position
            break
        result, err = records[position]
        if expected == ALLOW:
            assert result >= 0 and err == 0, (name, args)
        else:
            assert (result, err) == (-1, expected & 0xFFFF), (name, args)
    if expected_kill is None:
        assert exited_cleanly(status) and len(records) == len(planned)
    else:
        assert killed_by_sigsys(status) and len(records) == expected_kill


# --- installing ---


def test_the_kernel_refusing_a_program_names_the_call_and_the_cause() -> None:
    bad_load = seccomp.encode([Insn(0x20, 0, 0, 64), Insn(0x06, 0, 0, ALLOW)])  # past struct seccomp_data

    def body(report: Reporter) -> None:
        try:
            install(bad_load)
        except SeccompError as error:
            report((error.errno, str(error)))

    status, records = in_child(body)
    assert exited_cleanly(status)
    assert records[0][0] == errno.EINVAL
    assert "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC) failed" in records[0][1]
    assert "refused the program" in records[0][1]


def _status(field: str) -> str:
    """A field of the calling thread's /proc status."""
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def _thread_calls(go: threading.Event, done: list[Any], names: Sequence[tuple[str, tuple[int, ...]]]) -> None:
    """Wait for ``go``, then make the calls; record their results and this thread's seccomp state."""
    go.wait(10)
    results = [sys_call(name, *args) for name, args in names]
    done.append((threading.get_native_id(), results, _status("Seccomp"), _status("NoNewPrivs")))


@pytest.mark.parametrize("tsync", [True, False])
def test_tsync_puts_threads_started_earlier_under_the_filter(tsync: bool) -> None:
    def body(report: Reporter) -> None:
        go, done = threading.Event(), list[Any]()
        thread = threading.Thread(target=_thread_calls, args=(go, done, [("getppid", ())]))
        thread.start()
        install(Filter(ALLOW).add("getppid", ret_errno(errno.EL3HLT)).build(), tsync=tsync)
        go.set()
        thread.join(10)
        _, results, mode, _ = done[0]
        report((sys_call("getppid"), results[0], mode))

    status, records = in_child(body)
    assert exited_cleanly(status)
    own, threads, mode = records[0]
    assert own == (-1, errno.EL3HLT)
    if tsync:
        assert threads == (-1, errno.EL3HLT) and mode == "2"
    else:
        assert threads[1] == 0 and mode == "0"


def test_tsync_failing_names_the_thread_it_could_not_synchronise() -> None:
    def body(report: Reporter) -> None:
        ready, release = threading.Event(), threading.Event()
        tid: list[int] = []

        def own_filter() -> None:
            install(Filter(ALLOW).add("getppid", EPERM).build(), tsync=False)
            tid.append(threading.get_native_id())
            ready.set()
            release.wait(10)

        thread = threading.Thread(target=own_filter)
        thread.start()
        ready.wait(10)
        try:
            install(Filter(ALLOW).add("getuid", EPERM).build())
            report(("installed", None, ""))
        except SeccompError as error:
            report(("refused", error.thread == tid[0], str(error)))
        release.set()
        thread.join(10)
        report(sys_call("getuid"))

    status, records = in_child(body)
    assert exited_cleanly(status)
    outcome, right_thread, message = records[0]
    assert outcome == "refused" and right_thread
    assert "could not be synchronised" in message
    assert records[1][1] == 0  # no thread got the refused filter, the caller included


# --- the domU policy ---


def _policy_table() -> list[tuple[str, int]]:
    return [(name, action) for names, action, _ in seccomp.GUEST_DENIED for name in names]


def test_every_denied_syscall_gets_its_action_whatever_the_arguments() -> None:
    program = guest_policy().instructions()
    for name, action in _policy_table():
        for args in ([], [U64] * 6, [1, 2, 3, 4, 5, 6]):
            assert evaluate(program, SYSCALLS[name], args) == action, name
    for name in ("read", "write", "mmap", "execve", "prctl", "pidfd_open", "sched_getaffinity", "seccomp"):
        assert evaluate(program, SYSCALLS[name], [U64] * 6) == ALLOW, name
    assert evaluate(program, SYSCALLS["clone3"]) == ret_errno(errno.ENOSYS)


def test_the_guest_policy_is_small_and_lets_unruled_syscalls_through_on_jumps_alone() -> None:
    policy = guest_policy()
    program = policy.instructions()
    assert len(program) < 256
    ruled = {rule.nr for rule in policy.rules}
    # Along an unruled syscall's path only nr and arch are read: the kernel's action cache allows it outright.
    for nr in sorted(set(range(460)) - ruled):
        assert _constant_path(program, nr) == ALLOW, nr


def _constant_path(program: Sequence[Insn], nr: int) -> int | None:
    """What ``seccomp_is_const_allow`` sees: the RET reached reading only nr and arch, or None."""
    pc, accumulator = 0, 0
    while program[pc].code != 0x06:
        insn = program[pc]
        if insn.code == 0x20:  # LD|W|ABS
            if insn.k not in (0, 4):
                return None
            accumulator = nr if insn.k == 0 else AUDIT_ARCH_X86_64
        elif insn.code == 0x05:  # JA
            pc += insn.k
        elif insn.code in (0x15, 0x35):  # JEQ, JGE
            taken = accumulator == insn.k if insn.code == 0x15 else accumulator >= insn.k
            pc += insn.jt if taken else insn.jf
        else:
            return None
        pc += 1
    return program[pc].k


# Calls with every argument all-ones: each one, if it ever reached the kernel
# unfiltered, fails harmlessly (EFAULT, EINVAL, EBADF, ESRCH...), never with EPERM as root.
ALL_ONES = (U64,) * 6


def test_the_kernel_denies_every_eperm_entry_of_the_table() -> None:
    denied = [name for name, action in _policy_table() if action == EPERM]

    def body(report: Reporter) -> None:
        install(guest_policy().build())
        for name in denied:
            report((name, sys_call(name, *ALL_ONES)))

    status, records = in_child(body)
    assert exited_cleanly(status)
    assert dict(records) == {name: (-1, errno.EPERM) for name in denied}


@pytest.mark.parametrize("name", [name for name, action in _policy_table() if action == KILL_PROCESS])
def test_the_kernel_kills_a_guest_for_each_kill_entry(name: str) -> None:
    def body(report: Reporter) -> None:
        install(guest_policy().build())
        report("installed")
        report(sys_call(name, *ALL_ONES))

    status, records = in_child(body)
    assert killed_by_sigsys(status) and records == ["installed"]


def test_the_kernel_kills_an_x32_call() -> None:
    def body(report: Reporter) -> None:
        install(guest_policy().build())
        report("installed")
        report(sys_call(X32_SYSCALL_BIT | SYSCALLS["getppid"]))

    status, records = in_child(body)
    assert killed_by_sigsys(status) and records == ["installed"]


I386_GETPID = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"  # mov eax, 20 (i386 getpid); int 0x80; ret


def _int80_getpid() -> int:
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(I386_GETPID)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(address)())


def test_the_kernel_kills_an_i386_call_made_with_int_0x80() -> None:
    status, records = in_child(lambda report: report(_int80_getpid() > 0))
    if not exited_cleanly(status) or records != [True]:
        pytest.skip("this kernel has no i386 emulation")

    def body(report: Reporter) -> None:
        install(guest_policy().build())
        report("installed")
        report(_int80_getpid())

    status, records = in_child(body)
    assert killed_by_sigsys(status) and records == ["installed"]


def _guest_work(report: Reporter) -> None:
    """What a guest does all day, each step reported as (step, outcome)."""
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(threading.get_native_id()))
    thread.start()
    thread.join(10)
    report(("thread", bool(results)))
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    report(("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))
    report(("subprocess", subprocess.run([sys.executable, "-c", "pass"], timeout=10).returncode))
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 20)
    with mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED) as memory:
        memory[4096:4100] = b"xen!"
        report(("memfd+mmap", os.pread(fd, 4, 4096)))
    os.close(fd)
    ours, theirs = socket.socketpair()
    epoll = select.epoll()
    epoll.register(theirs.fileno(), select.EPOLLIN)
    ours.send(b"ping")
    report(("socketpair+epoll", (len(epoll.poll(5)), theirs.recv(4))))
    eventfd = os.eventfd(0)
    os.eventfd_write(eventfd, 3)
    report(("eventfd", os.eventfd_read(eventfd)))
    got: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    os.kill(os.getpid(), signal.SIGUSR1)
    report(("signal", got))
    name = ctypes.create_string_buffer(b"xl-d1-guest")
    set_name = sys_call("prctl", 15, ctypes.addressof(name))[0]  # PR_SET_NAME
    report(("prctl", (set_name, sys_call("prctl", 1, signal.SIGKILL)[0])))  # PR_SET_PDEATHSIG
    for family in (socket.AF_INET, socket.AF_INET6):
        socket.socket(family, socket.SOCK_STREAM).close()
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()  # NETLINK_ROUTE
    report(("sockets", True))
    report(("userfaultfd user mode", sys_call("userfaultfd", os.O_CLOEXEC | 1)[1]))
    report(("personality query", sys_call("personality", 0xFFFFFFFF)))
    report(("pidfd_open", sys_call("pidfd_open", os.getpid(), 0)[1]))


def _guest_denials(report: Reporter) -> None:
    """What a guest may not do, each reported as (what, errno)."""
    ppid = os.getppid()
    buffer = ctypes.create_string_buffer(8)
    iovec = struct.pack("<QQ", ctypes.addressof(buffer), 8)
    local = ctypes.create_string_buffer(iovec)
    sleeper = os.fork()
    if sleeper == 0:
        time.sleep(30)
        os._exit(0)
    try:  # its own child, which it could trace unfiltered
        report(("ptrace attach", sys_call("ptrace", PTRACE_ATTACH, sleeper, 0, 0)[1]))
    finally:
        os.kill(sleeper, signal.SIGKILL)
        os.waitpid(sleeper, 0)
    report(("ptrace seize parent", sys_call("ptrace", PTRACE_SEIZE, ppid, 0, 0)[1]))
    iov = ctypes.addressof(local)
    report(("process_vm_readv", sys_call("process_vm_readv", ppid, iov, 1, iov, 1, 0)[1]))
    report(("unshare netns", sys_call("unshare", 0x40000000)[1]))
    report(("setns", sys_call("setns", 0, 0)[1]))
    report(("mount", sys_call("mount", 0, 0, 0, 0, 0)[1]))
    report(("bpf", sys_call("bpf", 0, 0, 0)[1]))
    report(("perf_event_open", sys_call("perf_event_open", 0, 0, -1, -1, 0)[1]))
    report(("keyctl", sys_call("keyctl", 0, 0)[1]))
    report(("clone3", sys_call("clone3", 0, 0)[1]))
    for what, flags in (("clone newuser", 0x10000000 | SIGCHLD), ("clone parent", 0x8000 | SIGCHLD)):
        result, err = sys_call("clone", flags, 0, 0, 0, 0)
        if result == 0:  # the filter missed: this is the new process
            os._exit(0)
        if result > 0:
            os.waitpid(result, 0)
        report((what, err))
    report(("socket AF_UNIX", sys_call("socket", 1, 1, 0)[1]))  # connect() to a host socket needs one
    report(("socket AF_PACKET", sys_call("socket", 17, 3, 0)[1]))
    report(("socket AF_ALG", sys_call("socket", 38, 5, 0)[1]))
    report(("socket netlink audit", sys_call("socket", 16, 3, 9)[1]))
    report(("socketpair AF_INET", sys_call("socketpair", 2, 1, 0, ctypes.addressof(buffer))[1]))
    report(("ioctl TIOCSTI, high bits set", sys_call("ioctl", -1, 1 << 32 | 0x5412, 0)[1]))
    report(("ioctl FIONREAD", sys_call("ioctl", -1, 0x541B, 0)[1]))
    report(("userfaultfd kernel faults", sys_call("userfaultfd", os.O_CLOEXEC)[1]))
    report(("personality no ASLR", sys_call("personality", 0x0040000)[1]))
    report(("kill -1", sys_call("kill", -1, 0)[1]))
    report(("setpgid", sys_call("setpgid", 0, 0)[1]))
    report(("setsid", sys_call("setsid")[1]))
    report(("sched_setaffinity", sys_call("sched_setaffinity", 0, 8, ctypes.addressof(buffer))[1]))
    report(("io_uring_setup", sys_call("io_uring_setup", 1, ctypes.addressof(buffer))[1]))


GUEST_WORK = {
    "thread": True,
    "fork": 7,
    "subprocess": 0,
    "memfd+mmap": b"xen!",
    "socketpair+epoll": (1, b"ping"),
    "eventfd": 3,
    "signal": [signal.SIGUSR1],
    "prctl": (0, 0),
    "sockets": True,
    "userfaultfd user mode": 0,
    "personality query": (0, 0),
    "pidfd_open": 0,
}
GUEST_DENIALS = {
    "ptrace attach": errno.EPERM,
    "ptrace seize parent": errno.EPERM,
    "process_vm_readv": errno.EPERM,
    "unshare netns": errno.EPERM,
    "setns": errno.EPERM,
    "mount": errno.EPERM,
    "bpf": errno.EPERM,
    "perf_event_open": errno.EPERM,
    "keyctl": errno.EPERM,
    "clone3": errno.ENOSYS,
    "clone newuser": errno.EPERM,
    "clone parent": errno.EPERM,
    "socket AF_UNIX": errno.EACCES,
    "socket AF_PACKET": errno.EAFNOSUPPORT,
    "socket AF_ALG": errno.EAFNOSUPPORT,
    "socket netlink audit": errno.EPROTONOSUPPORT,
    "socketpair AF_INET": errno.EAFNOSUPPORT,
    "ioctl TIOCSTI, high bits set": errno.EPERM,
    "ioctl FIONREAD": errno.EBADF,  # not filtered: the kernel's own answer
    "userfaultfd kernel faults": errno.EPERM,
    "personality no ASLR": errno.EPERM,
    "kill -1": errno.EPERM,
    "setpgid": errno.EPERM,
    "setsid": errno.EPERM,
    "sched_setaffinity": errno.EPERM,
    "io_uring_setup": errno.EPERM,
}


def test_a_guest_under_its_policy_keeps_its_work_and_loses_the_host() -> None:
    def body(report: Reporter) -> None:
        install(guest_policy().build())
        _guest_work(report)
        _guest_denials(report)

    status, records = in_child(body)
    assert exited_cleanly(status)
    assert dict(records) == {**GUEST_WORK, **GUEST_DENIALS}


def test_the_guest_policy_covers_threads_started_before_it() -> None:
    probes = [
        ("ptrace", (PTRACE_SEIZE, os.getpid(), 0, 0)),
        ("unshare", (0x40000000,)),
        ("keyctl", (0, 0)),
        ("clone3", (0, 0)),
    ]

    def body(report: Reporter) -> None:
        go, done = threading.Event(), list[Any]()
        threads = [threading.Thread(target=_thread_calls, args=(go, done, probes)) for _ in range(3)]
        for thread in threads:
            thread.start()
        install(guest_policy().build())
        go.set()
        for thread in threads:
            thread.join(10)
        for _, results, mode, no_new_privs in done:
            report(([err for _, err in results], mode, no_new_privs))

    status, records = in_child(body)
    assert exited_cleanly(status)
    assert records == [([errno.EPERM, errno.EPERM, errno.EPERM, errno.ENOSYS], "2", "1")] * 3
