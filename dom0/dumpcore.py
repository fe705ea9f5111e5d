"""A domain's memory as an ELF core file (``xl dump-core``; libxenguest's ``xc_domain_dumpcore``).

Xen's own dump is an ELF file whose sections hold the pages and a p2m table
(``xen/include/public/elfnote.h``, ``tools/libs/guest/xg_core.h``); xenlike's is
what standard ELF tools read without knowing Xen: an ``ET_CORE`` file for x86-64
with one ``PT_LOAD`` segment per contiguous run of the domain's populated frames,
its pseudo-physical address as both ``p_paddr`` and ``p_vaddr``, and a
``PT_NOTE`` naming the domain (note ``xenlike``, type ``NT_XENLIKE_DOMAIN``: JSON
with domid, name, uuid, frame count). A domain's memory is a sparse memfd, so a
run is found with ``SEEK_DATA``/``SEEK_HOLE``: frames never touched are holes and
are left out. ``readelf -l FILE`` lists the runs; ``readelf -n FILE`` the note.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass

from xenlike.public.xen import PAGE_SIZE

__all__ = ["FrameRun", "populated_runs", "write_core", "NT_XENLIKE_DOMAIN", "MAX_SEGMENTS"]

# <elf.h>
ELFCLASS64, ELFDATA2LSB, EV_CURRENT = 2, 1, 1
ET_CORE, EM_X86_64 = 4, 62
PT_LOAD, PT_NOTE = 1, 4
PF_W, PF_R = 2, 4
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
NOTE_NAME = b"xenlike\0"
NT_XENLIKE_DOMAIN = 0x584C0001  # "XL" and 1: a note type of xenlike's own
MAX_SEGMENTS = 0xFFFF - 1  # e_phnum below PN_XNUM (the extended count is not written)
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class FrameRun:
    """Frames ``first .. first + count - 1``, every one populated."""

    first: int
    count: int


def populated_runs(fd: int, nr_frames: int) -> list[FrameRun]:
    """The runs of frames of the memfd ``fd`` that hold data (``SEEK_DATA`` / ``SEEK_HOLE``)."""
    runs: list[FrameRun] = []
    end = nr_frames * PAGE_SIZE
    offset = 0
    while offset < end:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                break
            raise
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        first = start // PAGE_SIZE
        last = -(-stop // PAGE_SIZE)  # a partly written page is a whole frame
        if runs and runs[-1].first + runs[-1].count >= first:
            previous = runs.pop()
            first = previous.first
        runs.append(FrameRun(first, last - first))
        offset = last * PAGE_SIZE
    return runs


def write_core(path: str, fd: int, nr_frames: int, domain: dict[str, object]) -> list[FrameRun]:
    """Write the core of the memory in ``fd`` to ``path``; returns the runs it holds.

    ValueError when the memory is in more runs than an ELF header can count.
    """
    runs = populated_runs(fd, nr_frames)
    if len(runs) > MAX_SEGMENTS:
        raise ValueError(f"{len(runs)} runs of frames are more than an ELF core's {MAX_SEGMENTS} segments")
    desc = json.dumps({**domain, "nr_frames": nr_frames, "page_size": PAGE_SIZE}).encode()
    note = NHDR.pack(len(NOTE_NAME), len(desc), NT_XENLIKE_DOMAIN) + NOTE_NAME + _pad4(desc)
    phnum = 1 + len(runs)
    note_offset = EHDR.size + phnum * PHDR.size
    data_offset = _align(note_offset + len(note), PAGE_SIZE)
    headers = [PHDR.pack(PT_NOTE, PF_R, note_offset, 0, 0, len(note), 0, 4)]
    offset = data_offset
    for run in runs:
        size = run.count * PAGE_SIZE
        address = run.first * PAGE_SIZE
        headers.append(PHDR.pack(PT_LOAD, PF_R | PF_W, offset, address, address, size, size, PAGE_SIZE))
        offset += size
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    ehdr = EHDR.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 0, 0, 0)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(out, ehdr + b"".join(headers) + note)
        os.lseek(out, data_offset, os.SEEK_SET)
        for run in runs:
            _copy(fd, out, run.first * PAGE_SIZE, run.count * PAGE_SIZE)
    finally:
        os.close(out)
    return runs


def _copy(src: int, dst: int, offset: int, length: int) -> None:
    while length:
        chunk = os.pread(src, min(COPY_CHUNK, length), offset)
        if not chunk:
            raise OSError(errno.EIO, f"the domain's memory ended at byte {offset}")
        os.write(dst, chunk)
        offset += len(chunk)
        length -= len(chunk)


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
