"""seccomp-BPF filters for x86-64: a small builder, an installer and the domU policy.

A filter is a classic BPF program (``struct sock_filter`` instructions) the kernel
runs on every system call of a thread, reading ``struct seccomp_data`` and
returning a ``SECCOMP_RET_*`` action (``include/uapi/linux/seccomp.h``,
``Documentation/userspace-api/seccomp_filter.rst``). A :class:`Filter` is a
default action plus ordered per-syscall rules, each optionally conditioned on
arguments; :meth:`Filter.build` emits the program:

1. ``arch`` is checked first: any other ``AUDIT_ARCH_*`` (an ``int 0x80`` i386
   call from a 64-bit process) gets the *foreign* action, since its syscall
   numbers mean something else;
2. a number with ``__X32_SYSCALL_BIT`` set (the x32 ABI, which shares
   ``AUDIT_ARCH_X86_64``) gets the foreign action too, or every rule below could
   be slipped past by calling the x32 alias of a syscall;
3. per syscall, in the order first added: a ``JEQ nr`` dispatch, then the
   syscall's rules, first match wins, falling back to the default action;
4. the default action.

Syscalls without rules follow nothing but ``JEQ nr`` jumps to a constant return,
which lets the kernel's action cache (``seccomp_is_const_allow``, Linux 5.11)
allow them without running the filter at all. A conditional jump reaches at
most 255 instructions; a syscall's rules longer than that are skipped with a
``BPF_JA`` (32-bit offset). A program longer than ``BPF_MAXINSNS`` is refused.

:func:`install` sets ``no_new_privs`` and loads a program with
``seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC)``: every thread of
the process gets the filter, which no process can ever remove, and every child
inherits. :func:`guest_policy` is the filter of a domU process (see
:data:`GUEST_DENIED`). :func:`evaluate` runs a program in Python, as the kernel
would, to inspect one without installing it.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from xenlike.kernel.namespaces import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)

__all__ = [
    "SYSCALLS",
    "AUDIT_ARCH_X86_64",
    "AUDIT_ARCH_I386",
    "X32_SYSCALL_BIT",
    "BPF_MAXINSNS",
    "SECCOMP_RET_KILL_PROCESS",
    "SECCOMP_RET_KILL_THREAD",
    "SECCOMP_RET_TRAP",
    "SECCOMP_RET_ERRNO",
    "SECCOMP_RET_TRACE",
    "SECCOMP_RET_LOG",
    "SECCOMP_RET_ALLOW",
    "ALLOW",
    "KILL_PROCESS",
    "KILL_THREAD",
    "TRAP",
    "LOG",
    "ret_errno",
    "action_name",
    "syscall_number",
    "Arg",
    "arg_eq",
    "arg_ne",
    "arg_masked_eq",
    "arg_any_set",
    "arg_none_set",
    "Rule",
    "Insn",
    "Filter",
    "encode",
    "decode",
    "evaluate",
    "SeccompError",
    "install",
    "supported",
    "GUEST_DENIED",
    "guest_policy",
]

# --- x86-64 syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl ("common" and "64" rows) ---

SYSCALLS: Mapping[str, int] = {
    "read": 0,
    "write": 1,
    "close": 3,
    "mmap": 9,
    "mprotect": 10,
    "munmap": 11,
    "ioctl": 16,
    "sched_yield": 24,
    "getpid": 39,
    "socket": 41,
    "socketpair": 53,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "exit": 60,
    "kill": 62,
    "uname": 63,
    "ptrace": 101,
    "getuid": 102,
    "syslog": 103,
    "getgid": 104,
    "geteuid": 107,
    "getegid": 108,
    "setpgid": 109,
    "getppid": 110,
    "getpgrp": 111,
    "setsid": 112,
    "personality": 135,
    "getpriority": 140,
    "modify_ldt": 154,
    "pivot_root": 155,
    "prctl": 157,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "gettid": 186,
    "sched_setaffinity": 203,
    "sched_getaffinity": 204,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "exit_group": 231,
    "mbind": 237,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "migrate_pages": 256,
    "unshare": 272,
    "move_pages": 279,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "seccomp": 317,
    "memfd_create": 319,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
}

# --- include/uapi/linux/audit.h, arch/x86/include/uapi/asm/unistd.h ---

AUDIT_ARCH_X86_64 = 0xC000003E  # EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH_I386 = 0x40000003  # EM_386 (3) | __AUDIT_ARCH_LE
X32_SYSCALL_BIT = 0x40000000  # __X32_SYSCALL_BIT: set in nr by x32 callers

# --- include/uapi/linux/seccomp.h ---

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_FILTER_FLAG_TSYNC = 1

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF
MAX_ERRNO = 4095  # include/linux/err.h: the kernel clamps a larger ERRNO data to this

ALLOW = SECCOMP_RET_ALLOW
KILL_PROCESS = SECCOMP_RET_KILL_PROCESS
KILL_THREAD = SECCOMP_RET_KILL_THREAD
TRAP = SECCOMP_RET_TRAP
LOG = SECCOMP_RET_LOG

_ACTION_NAMES = {
    SECCOMP_RET_KILL_PROCESS: "KILL_PROCESS",
    SECCOMP_RET_KILL_THREAD: "KILL_THREAD",
    SECCOMP_RET_TRAP: "TRAP",
    SECCOMP_RET_ERRNO: "ERRNO",
    SECCOMP_RET_TRACE: "TRACE",
    SECCOMP_RET_LOG: "LOG",
    SECCOMP_RET_ALLOW: "ALLOW",
}

# --- struct seccomp_data (64 bytes): int nr @0, __u32 arch @4, __u64 instruction_pointer @8, __u64 args[6] @16 ---

_DATA_NR = 0
_DATA_ARCH = 4
_DATA_ARGS = 16
_SECCOMP_DATA = struct.Struct("<IIQ6Q")

# --- include/uapi/linux/filter.h, bpf_common.h: classic BPF ---

BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_AND = 0x50
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_MAXINSNS = 4096
_JUMP_MAX = 255  # jt and jf are __u8
_LD_ABS = BPF_LD | BPF_W | BPF_ABS
_SOCK_FILTER = struct.Struct("<HBBI")
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def ret_errno(err: int) -> int:
    """``SECCOMP_RET_ERRNO`` with ``err`` (0..4095) in ``SECCOMP_RET_DATA``: the call fails with that errno."""
    if not 0 <= err <= MAX_ERRNO:
        raise ValueError(f"an errno for SECCOMP_RET_ERRNO is 0..{MAX_ERRNO}, not {err}")
    return SECCOMP_RET_ERRNO | err


def action_name(action: int) -> str:
    """``ALLOW``, ``KILL_PROCESS``, ``ERRNO(EPERM)``...: a ``SECCOMP_RET_*`` value as people read it."""
    base, data = action & SECCOMP_RET_ACTION_FULL, action & SECCOMP_RET_DATA
    name = _ACTION_NAMES.get(base, f"0x{action:08x}")
    if base == SECCOMP_RET_ERRNO:
        return f"ERRNO({_errno.errorcode.get(data, str(data))})"
    if base in (SECCOMP_RET_TRAP, SECCOMP_RET_TRACE) and data:
        return f"{name}({data})"
    return name


def _check_action(action: int) -> int:
    """Refuse what is not a ``SECCOMP_RET_*`` action a filter may return without a listener."""
    base = action & SECCOMP_RET_ACTION_FULL
    if base not in _ACTION_NAMES or not 0 <= action <= _U32:
        raise ValueError(f"0x{action:x} is not a SECCOMP_RET_* action (USER_NOTIF needs a listener: not supported)")
    if base == SECCOMP_RET_ERRNO and action & SECCOMP_RET_DATA > MAX_ERRNO:
        raise ValueError(f"ERRNO data {action & SECCOMP_RET_DATA} is above MAX_ERRNO ({MAX_ERRNO})")
    if base in (SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD, SECCOMP_RET_LOG, SECCOMP_RET_ALLOW) and (
        action & SECCOMP_RET_DATA
    ):
        raise ValueError(f"{_ACTION_NAMES[base]} carries no data (0x{action:08x})")
    return action


def syscall_number(syscall: int | str) -> int:
    """The x86-64 number of a syscall named in :data:`SYSCALLS`, or a number checked to be a native one."""
    if isinstance(syscall, str):
        try:
            return SYSCALLS[syscall]
        except KeyError:
            raise ValueError(f"no x86-64 number known for syscall {syscall!r}: pass its number") from None
    if not 0 <= syscall < X32_SYSCALL_BIT:
        raise ValueError(f"syscall number {syscall} is not a native x86-64 one (0..0x3fffffff)")
    return syscall


# --- conditions on struct seccomp_data args[] ---


@dataclass(frozen=True)
class Arg:
    """A condition on one syscall argument: ``(args[index] & mask) == value``, or ``!=`` when ``negate``.

    ``struct seccomp_data`` carries each argument as the full 64-bit register,
    even for a C ``int`` or ``unsigned int`` parameter, whose upper half the
    kernel ignores and a caller may fill at will. Compare such a parameter on its
    low 32 bits (``width=32`` in :func:`arg_eq`), or a rule can be slipped past
    by setting high bits (bubblewrap's TIOCSTI filter, CVE-2019-10063).
    """

    index: int
    mask: int
    value: int
    negate: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 5:
            raise ValueError(f"a syscall has arguments 0..5, not {self.index}")
        if not 0 < self.mask <= _U64 or not 0 <= self.value <= _U64:
            raise ValueError(f"mask 0x{self.mask:x} and value 0x{self.value:x} must be 64-bit, the mask non-zero")
        if self.value & ~self.mask:
            raise ValueError(f"value 0x{self.value:x} has bits outside mask 0x{self.mask:x}: it could never match")

    def holds(self, args: Sequence[int]) -> bool:
        """Whether the condition holds for these six argument registers."""
        argument = args[self.index] if self.index < len(args) else 0
        return ((argument & self.mask) == self.value) != self.negate


def _width_mask(width: int) -> int:
    if width not in (32, 64):
        raise ValueError(f"an argument is compared on 32 or 64 bits, not {width}")
    return (1 << width) - 1


def arg_eq(index: int, value: int, *, width: int = 64) -> Arg:
    """``args[index] == value`` on the low ``width`` bits (a negative value is taken as two's complement)."""
    mask = _width_mask(width)
    return Arg(index, mask, value & mask)


def arg_ne(index: int, value: int, *, width: int = 64) -> Arg:
    """``args[index] != value`` on the low ``width`` bits."""
    mask = _width_mask(width)
    return Arg(index, mask, value & mask, negate=True)


def arg_masked_eq(index: int, mask: int, value: int) -> Arg:
    """``(args[index] & mask) == value``."""
    return Arg(index, mask, value)


def arg_any_set(index: int, bits: int) -> Arg:
    """At least one of ``bits`` is set in ``args[index]``."""
    return Arg(index, bits, 0, negate=True)


def arg_none_set(index: int, bits: int) -> Arg:
    """None of ``bits`` is set in ``args[index]``."""
    return Arg(index, bits, 0)


@dataclass(frozen=True)
class Rule:
    """``action`` for syscall ``nr`` when every condition holds (always, with none)."""

    nr: int
    action: int
    conditions: tuple[Arg, ...] = ()


# --- struct sock_filter and its assembly ---


class Insn(NamedTuple):
    """One ``struct sock_filter``: ``__u16 code; __u8 jt; __u8 jf; __u32 k``."""

    code: int
    jt: int
    jf: int
    k: int


def _ld(offset: int) -> Insn:
    return Insn(_LD_ABS, 0, 0, offset)


def _ret(action: int) -> Insn:
    return Insn(BPF_RET | BPF_K, 0, 0, action)


def _jeq(k: int, jt: int, jf: int) -> Insn:
    if not (0 <= jt <= _JUMP_MAX and 0 <= jf <= _JUMP_MAX):
        raise ValueError(f"a conditional jump of {max(jt, jf)} instructions exceeds {_JUMP_MAX}: too many conditions")
    return Insn(BPF_JMP | BPF_JEQ | BPF_K, jt, jf, k)


def _words(arg: Arg) -> list[tuple[int, int, int]]:
    """(offset, mask, value) of the 32-bit halves of ``args[index]`` the condition looks at, high first.

    x86-64 is little-endian: the low word of ``args[i]`` is at ``16 + 8*i``, the high word 4 bytes on.
    """
    low = _DATA_ARGS + 8 * arg.index
    halves = [(low + 4, arg.mask >> 32, arg.value >> 32), (low, arg.mask & _U32, arg.value & _U32)]
    return [half for half in halves if half[1]]


def _load_masked(offset: int, mask: int) -> list[Insn]:
    code = [_ld(offset)]
    if mask != _U32:
        code.append(Insn(BPF_ALU | BPF_AND | BPF_K, 0, 0, mask))
    return code


def _condition(arg: Arg, fail: int) -> list[Insn]:
    """Code that falls through when ``arg`` holds and jumps ``fail`` instructions past its end when not."""
    words = _words(arg)
    pieces: list[list[Insn]] = [_load_masked(offset, mask) for offset, mask, _ in words]
    total = sum(len(piece) + 1 for piece in pieces)
    code: list[Insn] = []
    for (_, _, value), piece in zip(words, pieces):
        code += piece
        after = total - len(code) - 1  # instructions between this jump and the condition's end
        last = len(code) + 1 == total
        if not arg.negate:  # every word equal, or fail
            code.append(_jeq(value, 0, after + fail))
        elif last:  # every word so far equal: this one decides
            code.append(_jeq(value, after + fail, 0))
        else:  # a word that differs already makes the condition hold
            code.append(_jeq(value, 0, after))
    return code


def _rule_code(rule: Rule) -> list[Insn]:
    """The rule's conditions, then ``RET action``; a failed condition lands just past that ``RET``."""
    code = [_ret(rule.action)]
    for arg in reversed(rule.conditions):
        code = _condition(arg, len(code)) + code
    return code


def _block(rules: Sequence[Rule], default: int) -> list[Insn]:
    """A syscall's rules in order, then its fallback to the default action."""
    code: list[Insn] = []
    for rule in rules:
        code += _rule_code(rule)
    if rules[-1].conditions:
        code.append(_ret(default))
    return code


def _dispatch(nr: int, block_length: int) -> list[Insn]:
    """``JEQ nr`` into the block, else over it; a ``BPF_JA`` (32-bit offset) when it is too long for ``jf``."""
    if block_length <= _JUMP_MAX:
        return [_jeq(nr, 0, block_length)]
    return [_jeq(nr, 1, 0), Insn(BPF_JMP | BPF_JA, 0, 0, block_length)]


def encode(instructions: Iterable[Insn]) -> bytes:
    """The bytes of an array of ``struct sock_filter``."""
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in instructions)


def decode(program: bytes) -> list[Insn]:
    """The instructions of an array of ``struct sock_filter``."""
    if len(program) % _SOCK_FILTER.size:
        raise ValueError(f"{len(program)} bytes is not a whole number of 8-byte struct sock_filter")
    return [Insn(*fields) for fields in _SOCK_FILTER.iter_unpack(program)]


class Filter:
    """A seccomp filter for x86-64 under construction: a default action and ordered per-syscall rules.

    ``foreign`` is returned for a call of another architecture or of the x32
    ABI. Rules for one syscall are tried in the order added, the first whose
    conditions all hold decides; when none does, ``default`` does.
    """

    def __init__(self, default: int = ALLOW, *, foreign: int = KILL_PROCESS) -> None:
        self.default = _check_action(default)
        self.foreign = _check_action(foreign)
        self._rules: dict[int, list[Rule]] = {}

    def add(self, syscall: int | str, action: int, *conditions: Arg) -> Filter:
        """Return ``action`` for ``syscall`` when every condition holds; returns the filter, to chain calls."""
        nr = syscall_number(syscall)
        self._rules.setdefault(nr, []).append(Rule(nr, _check_action(action), tuple(conditions)))
        return self

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule, grouped by syscall in the order the syscalls were first named."""
        return tuple(rule for rules in self._rules.values() for rule in rules)

    def action_for(self, nr: int, args: Sequence[int] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
        """The action the rules give a call, read from the rules themselves rather than the program."""
        if arch != AUDIT_ARCH_X86_64 or (nr & _U32) >= X32_SYSCALL_BIT:
            return self.foreign
        for rule in self._rules.get(nr, ()):
            if all(arg.holds(args) for arg in rule.conditions):
                return rule.action
        return self.default

    def instructions(self) -> list[Insn]:
        """The program as ``struct sock_filter`` instructions; refused beyond ``BPF_MAXINSNS``."""
        code = [
            _ld(_DATA_ARCH),
            _jeq(AUDIT_ARCH_X86_64, 1, 0),
            _ret(self.foreign),
            _ld(_DATA_NR),
            Insn(BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_SYSCALL_BIT),
            _ret(self.foreign),
        ]
        for nr, rules in self._rules.items():
            block = _block(rules, self.default)
            code += _dispatch(nr, len(block)) + block
        code.append(_ret(self.default))
        if len(code) > BPF_MAXINSNS:
            raise ValueError(f"the filter takes {len(code)} instructions, more than BPF_MAXINSNS ({BPF_MAXINSNS})")
        return code

    def build(self) -> bytes:
        """The program's bytes, as :func:`install` takes them."""
        return encode(self.instructions())


# --- running a program in Python ---


def _jump(insn: Insn, accumulator: int) -> int:
    """How many instructions a ``BPF_JMP`` skips, as ``net/core/filter.c`` would."""
    op = insn.code & 0xF0
    if op == BPF_JA:
        return insn.k
    taken = {
        BPF_JEQ: accumulator == insn.k,
        BPF_JGT: accumulator > insn.k,
        BPF_JGE: accumulator >= insn.k,
        BPF_JSET: bool(accumulator & insn.k),
    }.get(op)
    if taken is None or insn.code & 0x08:
        raise ValueError(f"unsupported jump 0x{insn.code:02x}")
    return insn.jt if taken else insn.jf


def evaluate(
    program: bytes | Sequence[Insn],
    nr: int,
    args: Sequence[int] = (),
    arch: int = AUDIT_ARCH_X86_64,
    instruction_pointer: int = 0,
) -> int:
    """The ``SECCOMP_RET_*`` value ``program`` returns for one ``struct seccomp_data``.

    Understands the instructions :class:`Filter` emits (``LD|W|ABS``,
    ``ALU|AND|K``, ``JMP`` with ``K`` operands, ``RET|K``) and raises
    ``ValueError`` on any other, on a load outside ``struct seccomp_data`` and on
    running off the end.
    """
    insns = decode(program) if isinstance(program, bytes) else list(program)
    registers = [*(arg & _U64 for arg in args), 0, 0, 0, 0, 0, 0][:6]
    data = _SECCOMP_DATA.pack(nr & _U32, arch, instruction_pointer, *registers)
    accumulator, pc = 0, 0
    while pc < len(insns):
        insn = insns[pc]
        if insn.code == _LD_ABS:
            if insn.k % 4 or insn.k + 4 > len(data):
                raise ValueError(f"load at offset {insn.k} is outside struct seccomp_data")
            (accumulator,) = struct.unpack_from("<I", data, insn.k)
        elif insn.code == BPF_ALU | BPF_AND | BPF_K:
            accumulator &= insn.k
        elif insn.code & 0x07 == BPF_JMP:
            pc += _jump(insn, accumulator)
        elif insn.code == BPF_RET | BPF_K:
            return insn.k
        else:
            raise ValueError(f"unsupported instruction 0x{insn.code:02x} at {pc}")
        pc += 1
    raise ValueError("the program runs off its end without a RET")


# --- installing ---


class SeccompError(OSError):
    """Installing a filter failed. ``errno`` is the kernel's; ``thread`` is the TID TSYNC could not synchronise."""

    thread: int | None = None


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``: ``unsigned short len`` @0, ``struct sock_filter *filter`` @8 (16 bytes)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_SECCOMP_HINTS = {
    _errno.EACCES: "the caller has neither no_new_privs nor CAP_SYS_ADMIN",
    _errno.EINVAL: "the kernel refused the program (an instruction, jump or load offset) or a flag",
    _errno.ENOMEM: "this thread's filters would exceed 32768 instructions in all (MAX_INSNS_PER_PATH)",
    _errno.EFAULT: "the program's address is not readable",
    _errno.ENOSYS: "this kernel has no seccomp (CONFIG_SECCOMP_FILTER)",
}


def _program_length(program: bytes) -> int:
    count, rest = divmod(len(program), _SOCK_FILTER.size)
    if rest or not 1 <= count <= BPF_MAXINSNS:
        raise ValueError(f"a program is 1..{BPF_MAXINSNS} 8-byte instructions, not {len(program)} bytes")
    return count


def _set_no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: execve can no longer grant privileges (set-uid, file capabilities)."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"prctl(PR_SET_NO_NEW_PRIVS, 1) failed: {os.strerror(err)}")


def _seccomp_error(result: int, flags: int) -> SeccompError:
    call = f"seccomp(SECCOMP_SET_MODE_FILTER, {'SECCOMP_FILTER_FLAG_TSYNC' if flags else '0'})"
    if result > 0:  # TSYNC names the thread it could not move onto the new filter
        error = SeccompError(
            f"{call} failed: thread {result} could not be synchronised (it runs a filter this thread's "
            "does not descend from, or is in strict mode); no thread got the filter"
        )
        error.thread = result
        return error
    err = ctypes.get_errno()
    hint = _SECCOMP_HINTS.get(err, "unexpected")
    return SeccompError(err, f"{call} failed: {os.strerror(err)}: {hint}")


def install(program: bytes, *, tsync: bool = True) -> None:
    """Set ``no_new_privs`` and load ``program`` as a seccomp filter on this process, for good.

    With ``tsync`` every thread gets the filter (``SECCOMP_FILTER_FLAG_TSYNC``),
    or none does; without it only the calling thread. The filter stacks on any
    already there: all run, the strictest action wins. Raises ``ValueError`` for
    a malformed program and :class:`SeccompError`, naming the call that failed,
    when the kernel refuses.
    """
    machine = os.uname().machine
    if machine != "x86_64":
        raise SeccompError(_errno.EOPNOTSUPP, f"seccomp programs here are built for x86-64, not {machine}")
    count = _program_length(program)
    _set_no_new_privs()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    flags = SECCOMP_FILTER_FLAG_TSYNC if tsync else 0
    ctypes.set_errno(0)
    result = _syscall(
        ctypes.c_long(SYSCALLS["seccomp"]),
        ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(flags),
        ctypes.byref(fprog),
    )
    if result != 0:
        raise _seccomp_error(result, flags)


def supported() -> bool:
    """Whether this machine can run the filters built here: x86-64, and a kernel offering ``KILL_PROCESS``."""
    if os.uname().machine != "x86_64":
        return False
    action = ctypes.c_uint32(SECCOMP_RET_KILL_PROCESS)
    request = (ctypes.c_long(SYSCALLS["seccomp"]), ctypes.c_uint(SECCOMP_GET_ACTION_AVAIL), ctypes.c_uint(0))
    return bool(_syscall(*request, ctypes.byref(action)) == 0)


# --- the domU policy ---

EPERM = ret_errno(_errno.EPERM)

# include/uapi/linux/sched.h (the CLONE_NEW* flags are named once, in namespaces)
CLONE_PARENT = 0x00008000
CLONE_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)
# include/uapi/asm-generic/ioctls.h, include/uapi/linux/userfaultfd.h, include/uapi/linux/personality.h
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
USERFAULTFD_IOC_NEW = 0xAA00
UFFD_USER_MODE_ONLY = 1
PER_LINUX = 0x0000
PER_QUERY = 0xFFFFFFFF
# include/linux/socket.h, include/uapi/linux/netlink.h
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0

# Syscalls a guest never gets, whatever the arguments: (names, action, why).
# KILL_PROCESS where no Python guest has any business and the call only makes
# sense as an attack on the host; EPERM (what an unprivileged caller would get)
# where a library might probe and should see an ordinary failure.
GUEST_DENIED: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("ptrace",), EPERM, "attaching to, reading or steering another process"),
    (("process_vm_readv", "process_vm_writev"), EPERM, "reading or writing another process's memory"),
    (("process_madvise",), EPERM, "advising (paging out, collapsing) another process's memory"),
    (("kcmp",), EPERM, "comparing kernel objects of other processes: an ordering oracle on kernel pointers"),
    (("pidfd_getfd",), EPERM, "taking a file descriptor out of another process"),
    (("mount", "umount2", "pivot_root", "chroot"), EPERM, "changing the file system view the jail set up"),
    (
        ("open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"),
        EPERM,
        "the same, through the new mount API",
    ),
    (("unshare", "setns"), EPERM, "leaving or making namespaces: the jail's namespaces are final"),
    (("bpf",), EPERM, "eBPF programs and maps: a large kernel attack surface with a record of escapes"),
    (("perf_event_open",), EPERM, "hardware counters and kernel tracing: side channels and a record of bugs"),
    (("keyctl", "add_key", "request_key"), EPERM, "the kernel keyrings, which no namespace separates"),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), EPERM, "io_uring: its operations bypass seccomp"),
    (("open_by_handle_at", "name_to_handle_at"), EPERM, "opening files by handle, around the mount view"),
    (("quotactl", "quotactl_fd", "acct"), EPERM, "host-wide disk quotas and process accounting"),
    (("settimeofday", "clock_settime", "adjtimex", "clock_adjtime"), EPERM, "the host's clock is not the guest's"),
    (("sethostname", "setdomainname"), EPERM, "the host's names (a guest's name lives in xenstore)"),
    (("mbind", "migrate_pages", "move_pages"), EPERM, "NUMA placement of memory, which is the host's to decide"),
    (("sched_setaffinity",), EPERM, "CPU placement belongs to the hypervisor's scheduler (hard affinity)"),
    (("setsid", "setpgid"), EPERM, "leaving the domain's process group, which pause and destroy signal"),
    (("lookup_dcookie", "fanotify_init"), EPERM, "host-wide profiling and file-access monitoring"),
    (("syslog",), EPERM, "the kernel log: host events and kernel addresses"),
    (("modify_ldt",), EPERM, "16-bit segments, for DOS emulators: a record of kernel bugs"),
    (("reboot",), KILL_PROCESS, "restarting the host (a guest reboots through SCHEDOP_shutdown)"),
    (("kexec_load", "kexec_file_load"), KILL_PROCESS, "loading a new host kernel"),
    (("init_module", "finit_module", "delete_module"), KILL_PROCESS, "loading or removing kernel modules"),
    (("iopl", "ioperm"), KILL_PROCESS, "raw I/O port access"),
    (("swapon", "swapoff"), KILL_PROCESS, "the host's swap"),
)


def _guest_clone(policy: Filter) -> None:
    """Processes and threads, but no namespaces and no sibling processes.

    ``clone3`` passes its flags in memory, which BPF cannot read, so it gets
    ``ENOSYS``: glibc then falls back to ``clone``, whose flags are checked.
    ``CLONE_PARENT`` would make a process the domain's parent must reap and the
    hypervisor would not count as the domain's. ``CLONE_NEWTIME`` (0x80) is no
    ``clone`` flag: there that bit is part of the exit signal.
    """
    policy.add("clone3", ret_errno(_errno.ENOSYS))
    policy.add("clone", EPERM, arg_any_set(0, CLONE_NAMESPACES | CLONE_PARENT))


def _guest_sockets(policy: Filter) -> None:
    """IP and route-netlink sockets, and UNIX socket pairs; a new UNIX socket is refused, any other family
    is "not supported".

    A guest's UNIX sockets are those it was given (its hypercall channel) and the
    pairs it makes: ``socket(AF_UNIX)`` is refused (EACCES) because Landlock
    before ABI 9 does not cover ``connect(2)`` to a pathname socket, and the host
    has such sockets a guest's uid might be allowed to reach. Rarer families
    (AF_PACKET, AF_ALG, AF_VSOCK, AF_TIPC, ...) load modules and reach code with
    a record of bugs; route netlink serves getaddrinfo's ``AI_ADDRCONFIG`` and
    ``getifaddrs`` in the guest's own network namespace.
    """
    policy.add("socket", ret_errno(_errno.EACCES), arg_eq(0, AF_UNIX, width=32))
    for family in (AF_INET, AF_INET6):
        policy.add("socket", ALLOW, arg_eq(0, family, width=32))
    policy.add("socket", ALLOW, arg_eq(0, AF_NETLINK, width=32), arg_eq(2, NETLINK_ROUTE, width=32))
    policy.add("socket", ret_errno(_errno.EPROTONOSUPPORT), arg_eq(0, AF_NETLINK, width=32))
    policy.add("socket", ret_errno(_errno.EAFNOSUPPORT))
    policy.add("socketpair", ALLOW, arg_eq(0, AF_UNIX, width=32))
    policy.add("socketpair", ret_errno(_errno.EAFNOSUPPORT))


def _guest_ioctl(policy: Filter) -> None:
    """Every ioctl but three, compared on the 32 bits of ``unsigned int cmd``.

    ``TIOCSTI`` and ``TIOCLINUX`` push input into a terminal the guest may share
    with the host's shell; ``USERFAULTFD_IOC_NEW`` makes a userfaultfd through
    ``/dev/userfaultfd`` without the user-mode-only restriction.
    """
    for request in (TIOCSTI, TIOCLINUX, USERFAULTFD_IOC_NEW):
        policy.add("ioctl", EPERM, arg_eq(1, request, width=32))


def _guest_misc(policy: Filter) -> None:
    """Conditioned rules on ``userfaultfd``, ``personality`` and ``kill``.

    * ``userfaultfd`` only with ``UFFD_USER_MODE_ONLY``: the guest tracks its own
      dirty pages that way (async write-protect), while a fault taken in kernel
      mode cannot be held open to widen a race in the kernel.
    * ``personality`` only to query or to keep ``PER_LINUX``: other values turn
      off address-space randomisation (``ADDR_NO_RANDOMIZE``) or make data
      executable (``READ_IMPLIES_EXEC``) for what the guest runs.
    * ``kill(-1, ...)`` signals every process the uid may signal: never a guest's.
    """
    policy.add("userfaultfd", EPERM, arg_none_set(0, UFFD_USER_MODE_ONLY))
    policy.add("personality", ALLOW, arg_eq(0, PER_QUERY, width=32))
    policy.add("personality", ALLOW, arg_eq(0, PER_LINUX, width=32))
    policy.add("personality", EPERM)
    policy.add("kill", EPERM, arg_eq(0, -1, width=32))


def guest_policy(*, only: frozenset[str] | None = None, without: frozenset[str] = frozenset()) -> Filter:
    """The seccomp filter of a domU process: everything allowed but :data:`GUEST_DENIED` and the rules below.

    A deny-list, so that a Python guest keeps all it uses: threads, forks of
    vCPU processes (``clone`` without namespace flags, ``fork``, ``vfork``),
    ``execve``, memfd and mmap, epoll, eventfd, UNIX and IP sockets, signals,
    ``prctl`` (``PR_SET_NAME``, ``PR_SET_PDEATHSIG``), ``pidfd_open`` (it grants
    no more than ``kill`` and ``waitpid``), ``sched_getaffinity`` and further
    seccomp filters of its own. Calls of another architecture or of the x32 ABI
    kill the process. Install it last in the jail, after the namespaces, mounts,
    process group and Landlock it forbids changing, with ``RLIMIT_CORE`` 0 (a
    ``KILL_PROCESS`` dumps core otherwise).

    The policy can be installed in two filters, which the kernel both applies:
    ``without`` leaves those :data:`GUEST_DENIED` calls out (a jail that must
    still mount installs it early), ``only`` keeps just them, and none of the
    argument rules (the late, small filter).
    """
    policy = Filter(ALLOW, foreign=KILL_PROCESS)
    if only is None:
        _guest_clone(policy)
    for names, action, _why in GUEST_DENIED:
        for name in names:
            if name not in without and (only is None or name in only):
                policy.add(name, action)
    if only is None:
        _guest_sockets(policy)
        _guest_ioctl(policy)
        _guest_misc(policy)
    return policy
