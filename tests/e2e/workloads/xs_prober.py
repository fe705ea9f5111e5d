"""Writes data/probe every 50 ms and prints each answer: ``PROBE <n> ok`` or ``PROBE <n> <errno>``.

What xenstore faults are seen as from inside a guest: a refusal is an XsError
naming the errno; a delay makes the calls slower, none lost, in order.
"""

from xenlike.public.xs_wire import XsError


def run(ctx):
    n = 0
    while not ctx.sleep(0.05):
        n += 1
        try:
            ctx.xenstore.write("data/probe", str(n))
            print(f"PROBE {n} ok", flush=True)
        except XsError as exc:
            print(f"PROBE {n} {exc.errno_name}", flush=True)
        except TimeoutError:
            print(f"PROBE {n} timeout", flush=True)
