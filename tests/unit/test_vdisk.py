"""The direct and passthrough device models in-process: the shared checks, the hypervisor's vdisk_io
under hostile arguments, and the guest's disk API over a passthrough image."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domu.blkfront.blkfront import BlockIOError
from domu.vdisk.direct import DirectDisk
from domu.vdisk.passthrough import PassthroughDisk
from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Refused
from xenlike.hypervisor.vdisk import VirtualDisk, assign_vdisk, deassign_vdisk, vdisk_io, vdisk_list
from xenlike.kernel.memory import GuestMemory, PageAllocator
from xenlike.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
)
from xenlike.public.vdisk import MAX_IO_BYTES, check_request, model_limits
from xenlike.tools.config import parse_disk_spec
from xenlike.tools.config.disk import DiskSpec
from xenlike.tools.config.xlcfg import ConfigError

SECTORS = 2048  # a 1 MiB image
FRAMES = 64


def accepted(op: int, sector: int, nr_sectors: int, sectors: int, readonly: bool) -> bool:
    """The rule, written out again independently."""
    if op == BLKIF_OP_FLUSH_DISKCACHE:
        return True
    if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_DISCARD):
        return False
    if readonly and op != BLKIF_OP_READ:
        return False
    if op != BLKIF_OP_DISCARD and nr_sectors * 512 > MAX_IO_BYTES:
        return False
    return 0 <= sector and nr_sectors > 0 and sector + nr_sectors <= sectors


@given(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 255]), st.integers(-10, 3000), st.integers(-10, 3000),
       st.integers(1, 2100), st.booleans())
def test_check_request_refuses_exactly_what_blkback_refuses(op, sector, nr_sectors, sectors, readonly):
    assert (check_request(op, sector, nr_sectors, sectors, readonly) is None) == accepted(
        op, sector, nr_sectors, sectors, readonly
    )


def test_the_model_key_of_a_disk_spec():
    assert parse_disk_spec("vdev=xvda, target=/x").model == "split"
    assert parse_disk_spec("vdev=xvda, model=direct, target=/x").model == "direct"
    assert parse_disk_spec("/x,raw,xvda,rw,model=passthrough").model == "passthrough"
    with pytest.raises(ConfigError, match="model=virtio is unknown: expected split"):
        parse_disk_spec("vdev=xvda, model=virtio, target=/x")
    old = parse_disk_spec("vdev=xvda, target=/x").to_dict()
    del old["model"]
    assert DiskSpec.from_dict(old).model == "split"  # a config written before the key


def test_only_passthrough_gives_up_sharing_unplugging_and_migration():
    assert model_limits("passthrough") == {"shareable": False, "hot_unplug": False, "migratable": False}
    assert all(model_limits("direct").values())
    assert all(model_limits("split").values())


@pytest.fixture
def direct(tmp_path):
    """A domain holding a direct disk on a 1 MiB image, as assign_vdisk leaves it."""
    image = tmp_path / "d.img"
    image.write_bytes(bytes(SECTORS * 512))
    memory = GuestMemory.create(FRAMES)
    domain = Domain(7, "guest", FRAMES, FRAMES, 1, 1, memory)
    fd = os.open(image, os.O_RDWR)
    domain.vdisks[51712] = VirtualDisk("xvda", 51712, "direct", fd, SECTORS, False)
    yield domain, image
    for disk in domain.vdisks.values():
        disk.close()
    memory.close()


def call(domain, **args):
    try:
        return vdisk_io(None, domain, args, [])[0]["status"]
    except Refused as exc:
        return exc


def test_vdisk_io_copies_between_the_image_and_the_guests_frames(direct):
    domain, image = direct
    domain.memory.frames(3, 2)[:] = b"Z" * 8192
    assert call(domain, devid=51712, operation=BLKIF_OP_WRITE, sector=16, nbytes=8192, pfn=3) == BLKIF_RSP_OKAY
    assert image.read_bytes()[16 * 512 : 16 * 512 + 8192] == b"Z" * 8192
    assert call(domain, devid=51712, operation=BLKIF_OP_READ, sector=16, nbytes=4096, pfn=10) == BLKIF_RSP_OKAY
    assert bytes(domain.memory.frame(10)) == b"Z" * 4096
    assert call(domain, devid=51712, operation=BLKIF_OP_DISCARD, sector=16, nr_sectors=8) == BLKIF_RSP_OKAY
    assert image.read_bytes()[16 * 512 : 24 * 512] == bytes(4096)
    assert call(domain, devid=51712, operation=BLKIF_OP_FLUSH_DISKCACHE, sector=0) == BLKIF_RSP_OKAY


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.integers(-3, 10), sector=st.integers(-(1 << 40), 1 << 40), nbytes=st.integers(-(1 << 21), 1 << 21),
       pfn=st.integers(-(1 << 20), 1 << 20), devid=st.sampled_from([51712, 51728, -1]))
def test_hostile_vdisk_io_arguments_are_refused_and_touch_nothing_outside(direct, op, sector, nbytes, pfn, devid):
    """The fixture is shared by the examples on purpose: one image, however many requests hit it."""
    domain, image = direct
    status = call(domain, devid=devid, operation=op, sector=sector, nbytes=nbytes, pfn=pfn, nr_sectors=nbytes // 512)
    if devid != 51712:
        assert isinstance(status, Refused)
        return
    assert status in (BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP)
    if status == BLKIF_RSP_OKAY and op in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        assert 0 <= sector and sector + nbytes // 512 <= SECTORS and 0 <= pfn and pfn + -(-nbytes // 4096) <= FRAMES
    assert os.path.getsize(image) == SECTORS * 512  # never grown


def test_a_read_only_direct_disk_refuses_writes_and_discards(direct):
    domain, image = direct
    domain.vdisks[51712].readonly = True
    assert call(domain, devid=51712, operation=BLKIF_OP_WRITE, sector=0, nbytes=4096, pfn=1) == BLKIF_RSP_ERROR
    assert call(domain, devid=51712, operation=BLKIF_OP_DISCARD, sector=0, nr_sectors=8) == BLKIF_RSP_ERROR
    assert call(domain, devid=51712, operation=BLKIF_OP_READ, sector=0, nbytes=4096, pfn=1) == BLKIF_RSP_OKAY


@pytest.fixture
def passthrough(tmp_path):
    image = tmp_path / "p.img"
    image.write_bytes(bytes(SECTORS * 512))
    memory = GuestMemory.create(2048 + 16)
    kernel = SimpleNamespace(domid=3, memory=memory, pages=PageAllocator(16, 2048 + 16))
    fd = os.open(image, os.O_RDWR)
    disk = PassthroughDisk(kernel, "xvda", 51712, SECTORS, False, fd)
    yield disk, image
    os.close(fd)
    memory.close()


def test_a_passthrough_disk_has_blockdevices_api(passthrough):
    disk, image = passthrough
    data = os.urandom((1 << 20) - 4096)
    disk.write(8, data)
    assert disk.read(8, len(data)) == data
    with disk.batch() as batch:
        futures = [batch.write(s, bytes([s % 251]) * 512) for s in range(4)] + [batch.flush()]
    batch.wait()
    assert all(f.done() for f in futures)
    assert disk.read(0, 2048) == b"".join(bytes([s % 251]) * 512 for s in range(4))
    with disk.batch() as batch:  # served in queue order: the read sees the write before it, not the one after
        batch.write(64, b"A" * 4096)
        read = batch.read(64, 4096)
        batch.write(64, b"B" * 4096)
        past = batch.read(SECTORS - 4, 4096)
        big = batch.read(0, MAX_IO_BYTES + 4096)
    assert read.result() == b"A" * 4096 and disk.read(64, 4096) == b"B" * 4096
    with pytest.raises(BlockIOError, match="read at sector 2044 failed"):
        past.result()
    with pytest.raises(BlockIOError):
        big.result()  # past the 1 MiB disk's end: its second part is refused
    disk.discard(8, 8)
    assert disk.read(8, 4096) == bytes(4096)
    with disk.buffer(4096) as buf:
        buf.view[:] = b"Q" * 4096
        disk.submit_write_buffer(100, buf).result()
    assert image.read_bytes()[100 * 512 : 100 * 512 + 4096] == b"Q" * 4096
    f = disk.open()
    f.seek(100 * 512 + 1)
    assert f.read(3) == b"QQQ"


def test_a_passthrough_disk_refuses_what_blkback_refuses(passthrough):
    disk, image = passthrough
    with pytest.raises(BlockIOError, match="read at sector 2044 failed"):
        disk.read(SECTORS - 4, 4096)
    with pytest.raises(BlockIOError):
        disk.write(SECTORS, b"x" * 512)
    with pytest.raises(ValueError, match="whole 512-byte sectors"):
        disk.write(0, b"x" * 100)
    disk.readonly = True
    with pytest.raises(BlockIOError, match="read-only"):
        disk.write(0, b"x" * 512)
    assert os.path.getsize(image) == SECTORS * 512


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(write=st.booleans(), readonly=st.booleans(), sector=st.integers(-20, SECTORS + 20),
       nbytes=st.one_of(st.integers(-1024, MAX_IO_BYTES + 1024), st.sampled_from([512, 4096, MAX_IO_BYTES])))
def test_a_passthrough_disks_lone_requests_refuse_exactly_what_blkback_refuses(
    passthrough, write, readonly, sector, nbytes
):
    """submit_read/submit_write's own short path: the same answer as check_request, and nothing outside touched."""
    disk, image = passthrough
    disk.readonly = readonly
    op = BLKIF_OP_WRITE if write else BLKIF_OP_READ
    whole = nbytes > 0 and nbytes % 512 == 0
    expected = whole and check_request(op, sector, nbytes // 512, SECTORS, readonly) is None
    try:
        future = disk.submit_write(sector, b"w" * max(nbytes, 0)) if write else disk.submit_read(sector, nbytes)
        outcome = future.result()
        assert expected, (op, sector, nbytes, readonly)
        assert future.done() and (outcome is None if write else outcome == image.read_bytes()[sector * 512 :][:nbytes])
    except ValueError:
        assert not whole  # not whole sectors: the API's ValueError
    except BlockIOError:
        assert not expected
    assert os.path.getsize(image) == SECTORS * 512


def test_a_direct_disk_is_taken_back_between_two_requests_and_a_passthrough_one_is_not(direct, tmp_path):
    domain, image = direct
    hv = SimpleNamespace(domain=lambda domid: domain)
    assert call(domain, devid=51712, operation=BLKIF_OP_READ, sector=0, nbytes=4096, pfn=1) == BLKIF_RSP_OKAY
    deassign_vdisk(hv, domain, {"dom": 7, "devid": 51712}, [])
    refused = call(domain, devid=51712, operation=BLKIF_OP_READ, sector=0, nbytes=4096, pfn=1)
    assert isinstance(refused, Refused) and "no direct disk 51712" in str(refused)
    other = tmp_path / "p.img"
    other.write_bytes(bytes(4096))
    fd = os.open(other, os.O_RDWR)
    try:
        args = {"dom": 7, "vdev": "xvdb", "devid": 51728, "model": "passthrough", "sectors": 8, "readonly": False}
        assign_vdisk(hv, domain, args, [fd])
    finally:
        os.close(fd)
    with pytest.raises(Refused, match="passthrough disk: the guest holds its image's fd"):
        deassign_vdisk(hv, domain, {"dom": 7, "devid": 51728}, [])
    listed, fds = vdisk_list(None, domain, {}, [])
    assert [d["vdev"] for d in listed["disks"]] == ["xvdb"] and len(fds) == 1


def test_an_unplugged_disk_fails_new_requests_and_gives_its_pages_back_once_free(tmp_path):
    memory = GuestMemory.create(2048 + 16)
    hypercall = SimpleNamespace(call=lambda *a, **k: pytest.fail("an unplugged disk made a hypercall"))
    kernel = SimpleNamespace(domid=3, memory=memory, pages=PageAllocator(16, 2048 + 16), hypercall=hypercall)
    before = kernel.pages.free_frames
    disk = DirectDisk(kernel, "xvdb", 51728, SECTORS, False)
    pool = disk._pages.count
    buffer = disk.buffer(4096)
    disk.close()
    with pytest.raises(BlockIOError, match="xvdb was unplugged"):
        disk.write(0, b"x" * 4096)
    with pytest.raises(BlockIOError, match="xvdb was unplugged"):
        disk.buffer(4096)
    assert kernel.pages.free_frames == before - pool  # the buffer still holds a run of the pool
    buffer.release()
    assert kernel.pages.free_frames == before
    memory.close()
