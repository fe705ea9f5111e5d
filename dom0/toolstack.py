"""The toolstack server: xl's operations behind a zmq API (libxl's place in Xen).

Clients (the ``xenlike`` CLI, benchmarks, tests) connect a DEALER socket to the
run directory's ``toolstack.sock`` and send msgpack requests
``{"id": N, "op": "list", "args": {...}}``. Each gets one reply
``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false, "error": "..."}``;
a watch also streams ``{"id": N, "event": {...}}`` messages.

It also applies ``on_poweroff``/``on_reboot``/``on_crash`` when the hypervisor
raises ``VIRQ_DOM_EXC`` and a domain turns out to have shut down.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import zmq

from xenlike.public.xen import PAGE_SIZE, ShutdownReason
from xenlike.public.xenbus import XenbusState
from xenlike.tools.xl_format import state_letters
from xenlike.public.xs_wire import XsdSockmsgType as XS
from xenlike.public.xs_wire import XsError, join_strings, parse_error_payload

from .builder import BuiltDomain, home
from .xenstored import Delivery

if TYPE_CHECKING:
    from .main import Dom0

__all__ = ["Toolstack", "ToolstackError"]

log = logging.getLogger("dom0.toolstack")

ACTION_KEYS = {"poweroff": "on_poweroff", "reboot": "on_reboot", "crash": "on_crash", "watchdog": "on_watchdog",
               "soft_reset": "on_soft_reset"}
ACTION_DEFAULTS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy", "on_watchdog": "destroy",
                   "on_soft_reset": "restart"}
# A domain restarted this often within RESTART_WINDOW_S is not restarted again.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 10.0
HOST_SHUTDOWN_TIMEOUT_S = 10.0
DEVICE_CLOSE_TIMEOUT_S = 10.0  # libxl's LIBXL_DESTROY_TIMEOUT
POLL_INTERVAL_MS = 10
# How long `top` waits for the blkback workers' counters; a busy worker that has not
# looked at its control socket by then is shown with the last figures it sent.
TOP_STATS_TIMEOUT_S = 0.5


def _shutdown_reason_name(reason: Any) -> str:
    """``poweroff``, ``reboot``, ... for a ``SHUTDOWN_*`` code; one xenlike does not know counts as a crash."""
    try:
        return ShutdownReason(reason).name.lower()
    except ValueError:
        return "crash"


class ToolstackError(Exception):
    """A request the toolstack refuses; the message goes back to the client as is."""


@dataclass
class _Waiter:
    """A client waiting for a domain to be gone (``shutdown -w``, ``destroy``, ``down``)."""

    domids: set[int]
    deadline: float | None
    done: Callable[[bool], None]


@dataclass
class _Poll:
    """A client waiting for a condition dom0 checks on every turn of its loop."""

    ready: Callable[[], bool]
    deadline: float
    done: Callable[[bool], None]


class _Deferred(Exception):
    """The reply is sent later."""


class Toolstack:
    """Requests, the domU table, and the on_* actions."""

    def __init__(self, dom0: "Dom0") -> None:
        self.dom0 = dom0
        self.domains: dict[int, BuiltDomain] = {}
        self._handled_shutdown: set[int] = set()
        self._waiters: list[_Waiter] = []
        self._polls: list[_Poll] = []
        self._watches: dict[tuple[bytes, int], Any] = {}
        self._ops: dict[str, Callable[[dict, bytes, int], Any]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")
        }

    # -- transport -----------------------------------------------------------------

    def serve_requests(self) -> None:
        api = self.dom0.api
        while True:
            try:
                frames = api.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[-1]
            try:
                request = msgpack.unpackb(payload, raw=False)
                call_id, op, args = request.get("id", 0), request["op"], request.get("args") or {}
            except Exception:
                self._send(identity, {"id": 0, "ok": False, "error": "malformed request: expected msgpack {id, op, args}"})
                continue
            self._handle(identity, call_id, op, args)

    def _handle(self, identity: bytes, call_id: int, op: str, args: dict) -> None:
        handler = self._ops.get(op)
        try:
            if handler is None:
                raise ToolstackError(f"unknown operation {op!r}")
            result = handler(args, identity, call_id)
        except _Deferred:
            return
        except (ToolstackError, XsError) as exc:
            self._send(identity, {"id": call_id, "ok": False, "error": str(exc)})
        except OSError as exc:
            self._send(identity, {"id": call_id, "ok": False, "error": exc.strerror or str(exc)})
        except Exception as exc:
            log.exception("request %s failed", op)
            self._send(identity, {"id": call_id, "ok": False, "error": f"{op} failed: {type(exc).__name__}: {exc}"})
        else:
            self._send(identity, {"id": call_id, "ok": True, "result": result})

    def _send(self, identity: bytes, message: dict) -> None:
        try:
            self.dom0.api.send_multipart([identity, msgpack.packb(message, use_bin_type=True)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away

    def _reply_later(self, identity: bytes, call_id: int, ok_result: Any, error: str) -> Callable[[bool], None]:
        def done(ok: bool) -> None:
            if ok:
                self._send(identity, {"id": call_id, "ok": True, "result": ok_result})
            else:
                self._send(identity, {"id": call_id, "ok": False, "error": error})

        return done

    # -- timers --------------------------------------------------------------------

    def next_timeout_ms(self) -> int:
        if self._polls:
            return POLL_INTERVAL_MS
        deadlines = [w.deadline for w in self._waiters if w.deadline is not None]
        if not deadlines:
            return 1000
        return max(0, int((min(deadlines) - time.monotonic()) * 1000))

    def tick(self) -> None:
        now = time.monotonic()
        for poll in list(self._polls):
            if poll.ready() or now >= poll.deadline:
                self._polls.remove(poll)
                poll.done(poll.ready())
        for waiter in list(self._waiters):
            if waiter.deadline is not None and now >= waiter.deadline:
                self._waiters.remove(waiter)
                waiter.done(False)

    # -- domain lookup ---------------------------------------------------------------

    def _find(self, spec: Any) -> BuiltDomain:
        """A domU by name or id, as xl accepts either."""
        text = str(spec)
        for domain in self.domains.values():
            if domain.name == text or str(domain.domid) == text:
                return domain
        if text in ("0", "Domain-0"):
            raise ToolstackError("Domain-0 cannot be the target of this operation")
        raise ToolstackError(f"no domain {text!r}; `xenlike list` shows the domains")

    def _infos(self) -> list[dict]:
        return self.dom0.hypercall("domctl", cmd="getdomaininfo")[0]

    # -- domain exceptions and on_* actions ----------------------------------------

    def on_domain_exception(self) -> None:
        """VIRQ_DOM_EXC: some domains changed state; ask the hypervisor which, and act.

        Only the changed domains are fetched (``get_changed_domains``, as
        xenstored polls ``xenmanage_poll_changed_domain``), so a death costs the
        same with 1 or 200 domains running; waiters need every domain's state.
        """
        changed = self.dom0.hypercall("domctl", cmd="get_changed_domains")[0]
        for row in changed:
            built = self.domains.get(row["domid"])
            info = row["info"]
            if built is None:
                continue
            if info is None:
                self._forget(built, destroyed_elsewhere=True)
            elif info["shutdown"] and built.domid not in self._handled_shutdown:
                self._handled_shutdown.add(built.domid)
                self._apply_action(built, _shutdown_reason_name(info["shutdown_reason"]), info)
        if self._waiters:
            self._check_waiters()

    def _apply_action(self, built: BuiltDomain, reason: str, info: dict) -> None:
        key = ACTION_KEYS.get(reason)
        if key is None:  # suspend: nothing to do until resumed
            return
        action = built.config.get(key) or ACTION_DEFAULTS[key]
        log.info("%s: shut down (%s: %s); %s is %s", built.label, reason, info.get("exit", ""), key, action)
        if action in ("destroy", "coredump-destroy"):
            self._destroy(built)
        elif action in ("restart", "coredump-restart"):
            self._restart(built)
        elif action == "rename-restart":
            old_name = built.name
            self.dom0.builder.rename(built, f"{old_name}-{built.domid}")
            self._restart(built, name=old_name)
        # preserve: leave it shut down for inspection (`xenlike destroy` removes it)

    def _restart(self, built: BuiltDomain, name: str | None = None) -> None:
        now = time.monotonic()
        recent = [t for t in built.restarts if now - t < RESTART_WINDOW_S]
        config = dict(built.config, name=name or built.name)
        keep_preserved = name is not None
        if not keep_preserved:
            self._destroy(built)
        if len(recent) >= MAX_RESTARTS:
            log.warning("%s: restarted %d times in %.0fs; not restarting again", built.label, len(recent), RESTART_WINDOW_S)
            return
        try:
            new = self._create(config, uuid=None if keep_preserved else built.uuid)
        except Exception as exc:
            log.warning("%s: restart failed: %s", built.label, exc)
            return
        new.restarts = recent + [now]
        log.info("%s: restarted as d%d", built.label, new.domid)

    def _create(self, config: dict, paused: bool = False, uuid: str | None = None) -> BuiltDomain:
        if any(d.name == config["name"] for d in self.domains.values()):
            raise ToolstackError(f"a domain named {config['name']!r} already exists")
        built = self.dom0.builder.create(config, paused=paused, uuid=uuid)
        self.domains[built.domid] = built
        return built

    def _destroy(self, built: BuiltDomain) -> None:
        self.dom0.builder.destroy(built)
        self._forget(built)

    def _forget(self, built: BuiltDomain, destroyed_elsewhere: bool = False) -> None:
        self.domains.pop(built.domid, None)
        self._handled_shutdown.discard(built.domid)
        if destroyed_elsewhere:
            log.warning("%s: vanished; cleaning up after it", built.label)
            self.dom0.builder.destroy(built)

    def _check_waiters(self) -> None:
        infos = {info["domid"]: info for info in self._infos()}
        for waiter in list(self._waiters):
            if all(domid not in infos or (infos[domid]["shutdown"] and domid not in self.domains) or
                   (infos[domid]["shutdown"] and domid in self._handled_shutdown) for domid in waiter.domids):
                self._waiters.remove(waiter)
                waiter.done(True)

    # -- operations ----------------------------------------------------------------

    def _op_ping(self, args: dict, identity: bytes, call_id: int) -> Any:
        return {"run_dir": str(self.dom0.run_dir.path), "domains": len(self.domains)}

    def _op_list(self, args: dict, identity: bytes, call_id: int) -> Any:
        rows = []
        for info in self._infos():
            if args.get("domain") is not None and str(args["domain"]) not in (info["name"], str(info["domid"])):
                continue
            built = self.domains.get(info["domid"])
            rows.append({
                "name": info["name"],
                "domid": info["domid"],
                "mem": info["memory_kb"] // 1024,
                "vcpus": info["vcpus"],
                "state": state_letters(info),
                "cpu_time": info["cpu_time"],
                **({"info": info, "config": built.config if built else {}} if args.get("long") else {}),
            })
        if args.get("domain") is not None and not rows:
            raise ToolstackError(f"no domain {args['domain']!r}; `xenlike list` shows the domains")
        return rows

    def _op_info(self, args: dict, identity: bytes, call_id: int) -> Any:
        return self.dom0.hypercall("sysctl", cmd="physinfo")[0]

    def _op_top(self, args: dict, identity: bytes, call_id: int) -> Any:
        """One xentop sample (libxenstat's ``xenstat_get_node``, for ``tools/xentop/xentop.c``) in one request.

        ``{"time", "monotonic", "host": {total_kb, free_kb, nr_cpus, cpu_mhz, version},
        "domains": [{domid, name, running, blocked, paused, shutdown, shutdown_reason, dying,
        cpu_time, memory_kb, maxmem_kb, vcpus, nets, vbds, ssid}]}``: ``vbds`` holds each
        disk's blkback counters (None for a disk blkback does not know), ``nets`` is
        empty (there is no network device). The reply waits for the blkback workers'
        live counters, at most TOP_STATS_TIMEOUT_S.
        """
        infos = self._infos()
        physinfo = self.dom0.hypercall("sysctl", cmd="physinfo")[0]
        sampled = {"time": time.time(), "monotonic": time.monotonic()}
        answered = self.dom0.blkback.request_stats()

        def finish(ok: bool) -> None:
            result = {**sampled, "host": _top_host(physinfo), "domains": [self._top_domain(info) for info in infos]}
            self._send(identity, {"id": call_id, "ok": True, "result": result})

        self._polls.append(_Poll(answered, time.monotonic() + TOP_STATS_TIMEOUT_S, finish))
        raise _Deferred()

    def _top_domain(self, info: dict) -> dict:
        """A domain's xentop row data: getdomaininfo's fields and its disks' counters."""
        built = self.domains.get(info["domid"])
        disks = built.config.get("disk", []) if built is not None else []
        keys = ("domid", "name", "running", "blocked", "paused", "shutdown", "shutdown_reason", "dying", "cpu_time",
                "memory_kb", "maxmem_kb", "vcpus")
        return {**{key: info[key] for key in keys}, "nets": [], "ssid": 0,
                "vbds": [self.dom0.blkback.device_stats(info["domid"], disk["devid"]) for disk in disks]}

    def _op_create(self, args: dict, identity: bytes, call_id: int) -> Any:
        config = args["config"]
        built = self._create(config, paused=bool(args.get("paused")))
        return {"domid": built.domid, "name": built.name}

    def _op_destroy(self, args: dict, identity: bytes, call_id: int) -> Any:
        built = self._find(args["domain"])
        self._destroy(built)
        return {"domid": built.domid}

    def _op_shutdown(self, args: dict, identity: bytes, call_id: int) -> Any:
        return self._request_shutdown(args, identity, call_id, "poweroff")

    def _op_reboot(self, args: dict, identity: bytes, call_id: int) -> Any:
        return self._request_shutdown(args, identity, call_id, "reboot")

    def _request_shutdown(self, args: dict, identity: bytes, call_id: int, request: str) -> Any:
        targets = list(self.domains.values()) if args.get("all") else [self._find(args["domain"])]
        for built in targets:
            self.dom0.xs.write(f"{home(built.domid)}/control/shutdown", request)
            log.info("%s: %s requested", built.label, request)
        if args.get("wait") and targets:
            timeout = args.get("timeout")
            self._waiters.append(_Waiter(
                {b.domid for b in targets},
                time.monotonic() + timeout if timeout else None,
                self._reply_later(identity, call_id, {"domids": [b.domid for b in targets]},
                                  f"domains did not shut down within {timeout}s"),
            ))
            raise _Deferred()
        return {"domids": [b.domid for b in targets]}

    def _op_pause(self, args: dict, identity: bytes, call_id: int) -> Any:
        built = self._find(args["domain"])
        self.dom0.hypercall("domctl", cmd="pausedomain", domid=built.domid)
        return {}

    def _op_unpause(self, args: dict, identity: bytes, call_id: int) -> Any:
        built = self._find(args["domain"])
        self.dom0.hypercall("domctl", cmd="unpausedomain", domid=built.domid)
        return {}

    # -- scheduling (xl sched-credit, vcpu-list, vcpu-pin) ------------------------------

    def _domid_of(self, spec: Any) -> int:
        """Any domain, dom0 included, by name or id (scheduling applies to dom0 too)."""
        text = str(spec)
        for info in self._infos():
            if text in (info["name"], str(info["domid"])):
                return info["domid"]
        raise ToolstackError(f"no domain {text!r}; `xenlike list` shows the domains")

    def _op_sched_credit(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Set a domain's weight/cap (``weight``, ``cap``), or show them with the pool's parameters."""
        domid = self._domid_of(args["domain"]) if args.get("domain") is not None else None
        if args.get("weight") is not None or args.get("cap") is not None:
            if domid is None:
                raise ToolstackError("a weight or cap needs a domain (-d DOMAIN)")
            return {"set": self.dom0.hypercall("domctl", cmd="sched_credit_set", domid=domid, weight=args.get("weight"),
                                               cap=args.get("cap"))[0]}
        rows = self.dom0.hypercall("domctl", cmd="sched_credit_get", **({} if domid is None else {"domid": domid}))[0]
        pool = self.dom0.hypercall("sysctl", cmd="sched_info")[0]
        return {"pool": {"name": "Pool-0", **pool}, "domains": rows}

    def _op_vcpu_list(self, args: dict, identity: bytes, call_id: int) -> Any:
        domains = args.get("domains") or []
        if not domains:
            rows = self.dom0.hypercall("domctl", cmd="vcpu_list")[0]
        else:
            rows = [row for spec in domains
                    for row in self.dom0.hypercall("domctl", cmd="vcpu_list", domid=self._domid_of(spec))[0]]
        return {"nr_cpus": self.dom0.hypercall("sysctl", cmd="physinfo")[0]["nr_cpus"], "vcpus": rows}

    def _op_vcpu_pin(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Hard affinity: ``vcpu`` a number or "all", ``cpus`` in xl's syntax ("all", "0-3,^1")."""
        from xenlike.tools.config import ConfigError, parse_cpus

        domid = self._domid_of(args["domain"])
        vcpu = args.get("vcpu", "all")
        if str(vcpu) != "all" and not str(vcpu).isdigit():
            raise ToolstackError(f"vCPU {vcpu!r}: expected a vCPU number or 'all'")
        try:
            cpus = parse_cpus(str(args["cpus"]), key="CPUS")
        except ConfigError as exc:
            raise ToolstackError(str(exc)) from None
        self.dom0.hypercall("domctl", cmd="vcpu_pin", domid=domid, vcpu=None if str(vcpu) == "all" else int(vcpu),
                            cpus=cpus)
        return {}

    def _op_rename(self, args: dict, identity: bytes, call_id: int) -> Any:
        built = self._find(args["domain"])
        new = str(args["name"])
        if any(d.name == new for d in self.domains.values()) or new == "Domain-0":
            raise ToolstackError(f"a domain named {new!r} already exists")
        self.dom0.builder.rename(built, new)
        return {}

    def _op_uptime(self, args: dict, identity: bytes, call_id: int) -> Any:
        physinfo = self.dom0.hypercall("sysctl", cmd="physinfo")[0]
        rows = []
        for info in self._infos():
            uptime = time.time() - physinfo["started"] if info["domid"] == 0 else info["uptime"]
            if args.get("domain") is None or str(args["domain"]) in (info["name"], str(info["domid"])):
                rows.append({"name": info["name"], "domid": info["domid"], "uptime": uptime})
        return rows

    def _op_dmesg(self, args: dict, identity: bytes, call_id: int) -> Any:
        return self.dom0.hypercall("sysctl", cmd="readconsole", clear=bool(args.get("clear")))[0]["lines"]

    def _op_console_input(self, args: dict, identity: bytes, call_id: int) -> Any:
        built = self._find(args["domain"])
        data = args["data"] if isinstance(args["data"], bytes) else str(args["data"]).encode()
        return {"written": self.dom0.xenconsoled.send_input(built.domid, data)}

    def _op_console_attach(self, args: dict, identity: bytes, call_id: int) -> Any:
        if args.get("domain") is None:
            return self.dom0.xenconsoled.attach(None)
        built = self._find(args["domain"])
        return {"name": built.name, "domid": built.domid, **self.dom0.xenconsoled.attach(built.domid)}

    def _op_xenstore_read(self, args: dict, identity: bytes, call_id: int) -> Any:
        return self.dom0.xs.read(args["path"])

    def _op_xenstore_write(self, args: dict, identity: bytes, call_id: int) -> Any:
        self.dom0.xs.write(args["path"], args["value"])
        return {}

    def _op_xenstore_rm(self, args: dict, identity: bytes, call_id: int) -> Any:
        self.dom0.xs.rm(args["path"])
        return {}

    def _op_xenstore_ls(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Every node below ``path`` with value and permissions, depth first (xenstore-ls)."""
        xs = self.dom0.xs
        out = []

        def walk(path: str, depth: int) -> None:
            for child in xs.directory(path):
                full = f"{path.rstrip('/')}/{child}"
                perms = " ".join(str(p) for p in xs.get_perms(full))
                out.append({"path": full, "depth": depth, "name": child, "value": xs.read(full), "perms": perms})
                walk(full, depth + 1)

        walk(args.get("path") or "/", 0)
        return out

    def _op_xenstore_watch(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Stream watch events on ``path`` to this client until it unwatches."""
        token = f"cli-{call_id}"

        def receive(delivery: Delivery) -> None:
            fields = delivery.payload.split(b"\0")
            self._send(identity, {"id": call_id, "event": {"path": fields[0].decode(errors="replace"), "token": token}})

        conn = self.dom0.xenstore_service.local_client(receive)
        reply = self.dom0.xenstore_service.daemon.handle(conn, XS.WATCH, 1, 0, join_strings([args["path"], token]))
        if reply and reply[0].msg_type == XS.ERROR:
            self.dom0.xenstore_service.daemon.disconnect(conn)
            raise ToolstackError(f"cannot watch {args['path']}: {parse_error_payload(reply[0].payload)}")
        self._watches[(identity, call_id)] = conn
        self.dom0.xenstore_service.route(reply[1:])
        return {"token": token}

    def _op_xenstore_unwatch(self, args: dict, identity: bytes, call_id: int) -> Any:
        conn = self._watches.pop((identity, args["watch_id"]), None)
        if conn is not None:
            self.dom0.xenstore_service.daemon.disconnect(conn)
        return {}

    # -- virtual block devices -------------------------------------------------------------

    def _op_block_attach(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Hotplug a disk (``xl block-attach``): the guest sees it appear."""
        from xenlike.tools.config import parse_disk_spec

        built = self._find(args["domain"])
        disk = parse_disk_spec(args["spec"]).to_dict()
        self.dom0.builder.attach_disk(built, disk)
        return {"vdev": disk["vdev"], "devid": disk["devid"]}

    def _op_block_detach(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Unplug a disk (``xl block-detach``): online=0, Closing, wait for Closed (10 s), remove."""
        built = self._find(args["domain"])
        disk = next((d for d in built.config.get("disk", []) if args["vdev"] in (d["vdev"], str(d["devid"]))), None)
        if disk is None:
            raise ToolstackError(f"{built.label} has no disk {args['vdev']!r}; `xenlike block-list {built.name}` shows its disks")
        blkback = self.dom0.blkback
        blkback.request_close(built.domid, disk["devid"])

        def closed() -> bool:
            return blkback.device_state(built.domid, disk["devid"]) in (XenbusState.Closed, None)

        def finish(ok: bool) -> None:
            if not ok:
                log.warning("%s: %s did not close within %.0fs; removing it anyway", built.label, disk["vdev"],
                            DEVICE_CLOSE_TIMEOUT_S)
            blkback.remove(built.domid, disk["devid"])
            self.dom0.builder.remove_disk_nodes(built, disk["devid"])
            self._send(identity, {"id": call_id, "ok": True, "result": {"vdev": disk["vdev"], "forced": not ok}})

        self._polls.append(_Poll(closed, time.monotonic() + DEVICE_CLOSE_TIMEOUT_S, finish))
        raise _Deferred()

    def _op_block_list(self, args: dict, identity: bytes, call_id: int) -> Any:
        built = self._find(args["domain"])
        xs = self.dom0.xs
        rows = []
        for disk in built.config.get("disk", []):
            front = f"{home(built.domid)}/device/vbd/{disk['devid']}"
            back = f"/local/domain/0/backend/vbd/{built.domid}/{disk['devid']}"

            def read(path: str) -> str:
                try:
                    return xs.read(path).decode()
                except XsError:
                    return "-1"

            ring_ref = read(f"{front}/ring-ref")
            rows.append({"vdev": disk["devid"], "name": disk["vdev"], "backend": 0, "handle": disk["devid"],
                         "state": int(read(f"{back}/state")), "evtch": int(read(f"{front}/event-channel")),
                         "ring_ref": int(ring_ref if ring_ref != "-1" else read(f"{front}/ring-ref0")),
                         "be_path": back, "target": disk["target"], "access": disk["access"]})
        return rows

    def _op_down(self, args: dict, identity: bytes, call_id: int) -> Any:
        """Shut the host down: domUs cooperatively (then by force), dom0, the hypervisor."""
        domids = set(self.domains)
        for built in self.domains.values():
            try:
                self.dom0.xs.write(f"{home(built.domid)}/control/shutdown", "poweroff")
            except XsError:
                pass

        def finish(ok: bool) -> None:
            for built in list(self.domains.values()):
                log.info("%s: still running at host shutdown; destroying it", built.label)
                self._destroy(built)
            self._send(identity, {"id": call_id, "ok": True, "result": {"forced": not ok}})
            self.dom0.running = False
            self.dom0.host_shutdown_requested = True

        if not domids:
            finish(True)
            raise _Deferred()
        self._waiters.append(_Waiter(domids, time.monotonic() + float(args.get("timeout", HOST_SHUTDOWN_TIMEOUT_S)), finish))
        raise _Deferred()


def _top_host(physinfo: dict) -> dict:
    """The host's line of xentop: memory in KiB, CPUs, and the version as libxenstat spells it ("4.19-xenlike")."""
    frame_kb = PAGE_SIZE // 1024
    version = physinfo["version"]
    return {"total_kb": physinfo["total_frames"] * frame_kb, "free_kb": physinfo["free_frames"] * frame_kb,
            "nr_cpus": physinfo["nr_cpus"], "cpu_mhz": _cpu_mhz(),
            "version": f"{version['major']}.{version['minor']}{version['extra']}"}


@functools.cache
def _cpu_mhz() -> int:
    """The host CPU's clock in MHz from /proc/cpuinfo (0 if it says none), read once as Xen measures cpu_khz at boot."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return 0
