"""The balloon gives frames back without ever letting another thread have one the host still holds.

A deflate of part of a run used to free the whole run and allocate its head
again: between the two, any thread allocating (a disk's pool, a vchan, the
workload's ``ctx.pages``) could be handed frames the host had taken with
``decrease_reservation``, and the balloon's second step then failed. Here, after
every step the balloon takes on the allocator, the test takes every free frame
(as another thread could) and checks that none is still ballooned.
"""

from __future__ import annotations

from types import SimpleNamespace

from domu.balloon import Balloon
from xenlike.kernel.memory import OutOfFrames, PageAllocator
from xenlike.public.xen import PAGE_SIZE

NR_FRAMES = 1010


def _take_every_free_frame(pages: PageAllocator) -> list[int]:
    taken = []
    while True:
        try:
            taken.append(pages.alloc(1))
        except OutOfFrames:
            return taken


def test_a_partial_deflate_never_frees_the_frames_still_ballooned():
    pages = PageAllocator(10, NR_FRAMES)
    ballooned: set[int] = set()  # what the host holds back
    target = {"frames": 600}

    def hypercall(op: str, pfns=()):
        if op == "decrease_reservation":
            ballooned.update(pfns)
        elif op == "populate_physmap":
            ballooned.difference_update(pfns)
        return {}, []

    kernel = SimpleNamespace(
        label="d9 (test)",
        pages=pages,
        memory=SimpleNamespace(nr_frames=NR_FRAMES, release_frames=lambda pfns: None),
        hypercall=SimpleNamespace(call=hypercall),
        xenbus=SimpleNamespace(read_str=lambda path: str(target["frames"] * PAGE_SIZE // 1024), write=lambda *a: None),
    )
    balloon = Balloon(kernel)
    balloon.follow()  # inflate: 410 frames to the host
    assert len(ballooned) == 410

    handed_out_while_ballooned: list[int] = []
    real_free = pages.free

    def after(step):
        def wrapped(*args):
            step(*args)
            taken = _take_every_free_frame(pages)  # another thread, at this very moment
            handed_out_while_ballooned.extend(pfn for pfn in taken if pfn in ballooned)
            for pfn in taken:
                real_free(pfn)

        return wrapped

    pages.free, pages.trim = after(pages.free), after(pages.trim)  # type: ignore[method-assign]
    target["frames"] = 700  # mem-set up by 100 frames: the tail of the run comes back
    balloon.follow()
    assert handed_out_while_ballooned == []
    assert len(ballooned) == 310 and sum(count for _, count in balloon.runs) == 310
