"""Virtual-disk throughput against direct file I/O on the same image, in the same run.

A guest with a blkfront disk (blkback in dom0, a worker per device) runs
sequential 1 MiB writes (8 in flight, then a flush) and reads, and random 4 KiB
reads at queue depth 1 and 32 from page cache, and in batches of 32 through
the batch interface (each batch waited for); then this process does the same
with os.pwrite/os.pread on the same image file. The image is written in full
beforehand, so both passes overwrite allocated blocks.

The sequential passes run twice in the guest. ``seq_*_mbps`` go through
``submit_write``/``submit_read``: blkfront copies a WRITE's bytes into its pool
pages and a READ's out into a new bytes object, and blkback's
``pwritev``/``preadv`` copy between those pages and the image, two copies a
request. ``seq_*_zc_mbps`` go through zero-copy buffers (``disk.buffer()``,
borrowed before the clock starts): blkfront copies nothing. For a write the
workload copies the 1 MiB source block into the buffer once per request (it
produces the data there), then blkback's ``pwritev`` copies it to the image:
still two copies, one of them now the workload's. Native ``os.pwrite`` copies
the same ready block into the page cache: one copy, producing the data not
counted. For a read, blkback's ``preadv`` copies the image into the buffer and
the workload compares two of its bytes: one copy. Native ``os.pread`` allocates
a new bytes object the kernel copies into, and drops it: one copy and an
allocation. Each side first makes one untimed sequential pass over 8 MiB
(``WARM_UP_MIB``, what blkfront's grant pool holds), so no figure includes the
pool's first use (granting it, blkback's persistent mappings, the first touch of
its pages), a cost paid once per device.

    python bench/blk.py [--json] [--quick]
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.blk_workload import WARM_UP_MIB  # noqa: E402
from bench.common import parser, report  # noqa: E402
from xenlike.kernel.rundir import RunDir  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

MIB = 1 << 20
WORKLOAD = f"{Path(__file__).parent / 'blk_workload.py'}:run"


def native(path: str, total_mib: int, random_ops: int) -> dict[str, float]:
    block = random.Random(1).randbytes(MIB)
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(WARM_UP_MIB):  # as the guest's warm-up pass
            os.pwrite(fd, block, i * MIB)
            os.pread(fd, MIB, i * MIB)
        start = time.perf_counter()
        for i in range(total_mib):
            os.pwrite(fd, block, i * MIB)
        os.fdatasync(fd)
        write = total_mib / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(total_mib):
            os.pread(fd, MIB, i * MIB)
        read = total_mib / (time.perf_counter() - start)
        rng = random.Random(2)
        offsets = [rng.randrange(total_mib * MIB // 4096) * 4096 for _ in range(random_ops)]
        start = time.perf_counter()
        for offset in offsets:
            os.pread(fd, 4096, offset)
        iops = random_ops / (time.perf_counter() - start)
    finally:
        os.close(fd)
    return {"seq_write_native_mbps": write, "seq_read_native_mbps": read, "rand4k_native_iops": iops}


def guest(tmp: str, image: str, total_mib: int, random_ops: int) -> dict[str, float]:
    run_dir = RunDir(tmp)
    subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", tmp, "up", "-d", "--memory", "1024", "/dev/null"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        with ToolstackClient(run_dir) as client:
            config = {"name": "blkbench", "memory": 256, "workload": WORKLOAD,
                      "workload_args": [str(total_mib), str(random_ops)],
                      "disk": [{"target": image, "vdev": "xvda", "devid": 51712, "format": "raw", "access": "rw",
                                "devtype": "disk", "backend": "0", "discard": True, "direct_io_safe": False,
                                "trusted": True, "size": None}]}
            client.call("create", config=config)
            log = Path(tmp) / "logs" / "blkbench.log"
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                for line in log.read_text().splitlines() if log.exists() else []:
                    if line.startswith("BLKBENCH "):
                        return json.loads(line[len("BLKBENCH "):])
                time.sleep(0.2)
            raise RuntimeError(f"the guest reported nothing; see {log}")
    finally:
        subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", tmp, "down"], stdout=subprocess.DEVNULL)


def _allocate(path: str, total_mib: int) -> None:
    """Write the whole image once, so both passes overwrite allocated blocks.

    A sparse image would make the first pass (the guest's) pay for the file
    system's block allocation and the second (native) not.
    """
    with open(path, "wb") as f:
        for _ in range(total_mib):
            f.write(bytes(MIB))
        os.fdatasync(f.fileno())


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    total_mib = 32 if args.quick else 128
    random_ops = 5_000 if args.quick else 40_000
    with tempfile.TemporaryDirectory(prefix="xl-blk-", dir="/tmp") as tmp:
        image = os.path.join(tmp, "bench.img")
        _allocate(image, total_mib)
        figures = guest(tmp, image, total_mib, random_ops)
        figures.update(native(image, total_mib, random_ops))
    ordered = {key: figures[key] for key in ("seq_write_mbps", "seq_write_native_mbps", "seq_read_mbps",
                                             "seq_read_native_mbps", "rand4k_qd1_iops", "rand4k_qd32_iops",
                                             "rand4k_batch32_iops", "rand4k_native_iops", "seq_write_zc_mbps",
                                             "seq_read_zc_mbps")}
    ratios = {
        "seq_write_mbps / native": ordered["seq_write_mbps"] / ordered["seq_write_native_mbps"],
        "seq_read_mbps / native": ordered["seq_read_mbps"] / ordered["seq_read_native_mbps"],
        "rand4k_qd32_iops / native": ordered["rand4k_qd32_iops"] / ordered["rand4k_native_iops"],
        "rand4k_qd1_iops / native": ordered["rand4k_qd1_iops"] / ordered["rand4k_native_iops"],
        "rand4k_batch32_iops / native": ordered["rand4k_batch32_iops"] / ordered["rand4k_native_iops"],
        "seq_write_zc_mbps / native": ordered["seq_write_zc_mbps"] / ordered["seq_write_native_mbps"],
        "seq_read_zc_mbps / native": ordered["seq_read_zc_mbps"] / ordered["seq_read_native_mbps"],
    }
    report(ordered, ratios, args.json)


if __name__ == "__main__":
    main()
