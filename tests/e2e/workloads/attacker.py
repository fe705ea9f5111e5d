"""A hostile guest: tries to reach what is not its own, and reports each answer.

workload_args: the victim's domid. Prints ``ATTACKS {json}`` on its console.
"""

import json

from xenlike.public.event_channel import EvtchnError
from xenlike.kernel.hypercall import HypercallError
from xenlike.public.xs_wire import XsError


def attempt(results, name, action):
    try:
        outcome = action()
        results[name] = {"allowed": True, "result": repr(outcome)[:200]}
    except (XsError, HypercallError, EvtchnError) as exc:
        results[name] = {"allowed": False, "error": type(exc).__name__, "errno": getattr(exc, "errno_name", None)
                         or getattr(exc, "errno", None), "message": str(exc)}


def run(ctx):
    victim = int(ctx.args[0])
    xs, hc = ctx.xenstore, ctx.hypercall
    results = {}
    attempt(results, "read_victim_name", lambda: xs.read(f"/local/domain/{victim}/name"))
    attempt(results, "write_victim_data", lambda: xs.write(f"/local/domain/{victim}/data/owned", "x"))
    attempt(results, "rm_victim_home", lambda: xs.rm(f"/local/domain/{victim}"))
    attempt(results, "write_dom0", lambda: xs.write("/local/domain/0/name", "pwned"))
    attempt(results, "write_own_name", lambda: xs.write("name", "not-me"))
    attempt(results, "write_own_data", lambda: xs.write("data/fine", "yes"))
    attempt(results, "big_node", lambda: xs.write("data/big", "x" * 3000))

    def many_nodes():
        for i in range(1100):
            xs.write(f"data/n{i}", "v")
    attempt(results, "node_quota", many_nodes)
    attempt(results, "domctl_destroy", lambda: hc.call("domctl", cmd="destroydomain", domid=victim))
    attempt(results, "domctl_info", lambda: hc.call("domctl", cmd="getdomaininfo"))
    attempt(results, "sysctl", lambda: hc.call("sysctl", cmd="physinfo"))
    victim_store_port = int(xs.read_str("store/port"))  # our own store port number: the victim's is alike
    attempt(results, "bind_victim_port", lambda: hc.call("evtchn_bind_interdomain", remote_dom=victim, remote_port=victim_store_port))
    attempt(results, "close_victim_port", lambda: hc.call("evtchn_close", dom=victim, port=victim_store_port))
    attempt(results, "status_victim_port", lambda: hc.call("evtchn_status", dom=victim, port=victim_store_port))
    attempt(results, "signal_unbound_port", lambda: ctx.events.notify(99))
    attempt(results, "map_victim_xenstore_grant", lambda: hc.call("grant_map", granter=victim, refs=[1]))
    attempt(results, "copy_from_victim_frame", lambda: hc.call("grant_copy", ops=[{"source": {"domid": victim, "gmfn": 0}, "dest": {"gmfn": 100}, "len": 64}]))
    attempt(results, "alloc_port_for_victim", lambda: hc.call("evtchn_alloc_unbound", dom=victim, remote_dom=0))

    def unbuildable_hypercall():
        # A map keyed by a list: msgpack parses it and cannot build it. The hypervisor must refuse it and go on.
        hc.sock.send(b"\x81\x90\x00")
        return hc.call("evtchn_status", port=victim_store_port)  # our own port: answered if the hypervisor lives
    attempt(results, "unbuildable_hypercall", unbuildable_hypercall)
    print("ATTACKS " + json.dumps(results), flush=True)
    ctx.shutdown.wait()
