"""What the zygote does so a forked guest copies little: its fork, and pymalloc's free blocks filled."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from xenlike.kernel import pymalloc
from xenlike.kernel.proc import fork_single_threaded

# Run in an interpreter of its own: the test process may have threads of other tests running.
_DRAWS = """
import os, random
from xenlike.kernel.proc import fork_single_threaded

def draw():
    read_end, write_end = os.pipe()
    pid = fork_single_threaded()
    if pid == 0:
        os.write(write_end, repr(random.random()).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        value = f.read().decode()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return value

random.seed(1234)  # the parent's state, which a child not reseeded would copy
state = random.getstate()
children = [draw(), draw()]
random.setstate(state)
print(" ".join(children + [repr(random.random())]))
"""


def test_children_of_a_fork_without_hooks_each_draw_their_own_random_sequence() -> None:
    out = subprocess.run([sys.executable, "-c", _DRAWS], capture_output=True, text=True, check=True, timeout=60)
    first, second, parents = out.stdout.split()
    assert len({first, second, parents}) == 3


def test_a_fork_without_hooks_refuses_while_another_thread_runs() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="threads running"):
            fork_single_threaded()
    finally:
        release.set()
        thread.join()


def test_filling_free_blocks_leaves_none_in_a_fragmented_size_class() -> None:
    if not pymalloc.free_blocks():
        pytest.skip("this interpreter gives no pymalloc report")
    # 5,000 blocks of one class freed in the middle of their pools: the spread a child would copy.
    size = 160
    objects = [bytes(size - sys.getsizeof(b"")) for _ in range(10_000)]
    del objects[::2]
    before = pymalloc.free_blocks()[size]
    assert before >= 5_000
    assert pymalloc.fill_free_blocks() >= before
    assert pymalloc.free_blocks()[size] < before // 20  # what reading the report frees, no more


def test_the_size_class_report_is_read_as_block_sizes() -> None:
    blocks = pymalloc.free_blocks()
    if not blocks:
        pytest.skip("this interpreter gives no pymalloc report")
    assert min(blocks) in (8, 16) and max(blocks) == 512 and all(size % min(blocks) == 0 for size in blocks)
