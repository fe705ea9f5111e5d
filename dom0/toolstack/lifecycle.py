"""The domUs the toolstack built, and what becomes of one that shuts down.

When the hypervisor raises ``VIRQ_DOM_EXC`` (a domain shut down or vanished),
the toolstack asks which domains changed and applies the domain's
``on_poweroff``/``on_reboot``/``on_crash``/``on_watchdog``/``on_soft_reset``
action from its xl.cfg: destroy, restart, rename-restart or preserve. This is
libxl's domain death handling (``libxl_evenable_domain_death``) with xl's policy
on top (``handle_domain_death`` in ``tools/xl/xl_vmcontrol.c``).

A create waits for its guest's report (:class:`StartReport`,
``xenlike.public.workload_state``), which this table reads before an on_* action
destroys the domain and its nodes, and follows through on_crash restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenlike.kernel.proc import FdBudget
from xenlike.public import workload_state
from xenlike.public.xen import ShutdownReason
from xenlike.public.xs_wire import XsError, home_path

from ..builder import BuiltDomain, DomainBuilder
from ..vchan_policy import VchanPolicy
from .request import ToolstackError

if TYPE_CHECKING:
    from ..xenstored import LocalXenstore

__all__ = ["Lifecycle", "StartReport"]

log = logging.getLogger("dom0.toolstack")

DOMAIN_FDS = 6
"""File descriptors one domU costs dom0, counted on a running host: its memfd,
which dom0 keeps and maps without a copy of it (1); the eventfd of each of dom0's
ends of the xenstore and console channels and the guest's eventfd it sends
through (4); xenconsoled's log of its console (1). While it is built, the two fds
of the create's replies not yet adopted are held too (2, within the budget's
reserve)."""

# The xl.cfg key that says what to do for each shutdown reason, and xl's default.
ACTION_KEYS = {
    "poweroff": "on_poweroff",
    "reboot": "on_reboot",
    "crash": "on_crash",
    "watchdog": "on_watchdog",
    "soft_reset": "on_soft_reset",
}
ACTION_DEFAULTS = {
    "on_poweroff": "destroy",
    "on_reboot": "restart",
    "on_crash": "destroy",
    "on_watchdog": "destroy",
    "on_soft_reset": "restart",
}
# A domain restarted this often within RESTART_WINDOW_S is not restarted again.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 10.0


# StartReport.state besides workload_state's STARTED and FAILED: nothing reported yet.
PENDING = "pending"


@dataclass
class StartReport:
    """Whether a create's guest started its workload: what ``create`` answers.

    ``domid`` is the domain whose report is awaited, or that started; each domain
    of this create that did not start adds ``(domid, reason)`` to ``failures``
    (the guest's own line from ``~/workload/error``, or how it ended). ``state``
    is STARTED, FAILED (no domain of this create runs its workload; ``end`` says
    what became of the last one) or PENDING. On_crash restarts move ``domid`` on
    to the new domain (``restarted`` says how many times).
    """

    name: str
    domid: int
    state: str = PENDING
    failures: list[tuple[int, str]] = field(default_factory=list)
    restarted: int = 0
    end: str = ""

    def message(self, timeout_s: float) -> str:
        """The one line a user is told, naming the domain and the cause ("" for a plain start)."""
        if not self.failures:
            if self.state == PENDING:
                return (
                    f"{self.name} (domain {self.domid}) has not reported its workload started within "
                    f"{timeout_s:g}s; it runs on (`xenlike console {self.name}` shows its boot)"
                )
            return ""
        first, reason = self.failures[0]
        line = f"{self.name} (domain {first}) did not start: {reason}"
        if self.restarted:
            later = [r for _, r in self.failures[1:]]
            line += f"; on_crash restarted it {_times(self.restarted)}"
            if self.state == workload_state.STARTED:
                line += f", and domain {self.domid} started"
            elif self.state == PENDING:
                line += f"; domain {self.domid} has not reported its workload started within {timeout_s:g}s"
            elif later:
                same = all(r == reason for r in later)
                line += " and it failed again each time" if same else f"; it failed again, last: {later[-1]}"
        if self.end:
            line += f"; {self.end}"
        return line

    def to_dict(self, timeout_s: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "domid": self.domid,
            "failures": [list(f) for f in self.failures],
            "restarted": self.restarted,
            "message": self.message(timeout_s),
        }


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _shutdown_reason_name(reason: Any) -> str:
    """``poweroff``, ``reboot``, ... for a ``SHUTDOWN_*`` code; one xenlike does not know counts as a crash."""
    try:
        return ShutdownReason(reason).name.lower()
    except ValueError:
        return "crash"


def _how_it_ended(reason: str, exit_note: str) -> str:
    """How a domain ended, for the log line of its on_* action (xl's ``handle_domain_death``).

    ``exit_note`` is the hypervisor's (``getdomaininfo``'s ``exit``). For a guest
    that shut down it already reads ``shut down (poweroff)``, so that is said
    once; a crash says what the process did, and any other note is kept after
    the reason.
    """
    if reason == "crash":
        return f"crashed ({exit_note})" if exit_note else "crashed"
    if not exit_note or exit_note == f"shut down ({reason})":
        return f"shut down ({reason})"
    return f"shut down ({reason}: {exit_note})"


class Lifecycle:
    """The domU table: create, find, destroy, and the on_* actions when a domain shuts down.

    ``hypercall(op, **args)`` is dom0's hypercall channel; ``builder`` builds and
    tears down the domains; ``xs`` is dom0's xenstore connection, where guests report
    their workloads starting.
    """

    def __init__(
        self, builder: DomainBuilder, hypercall: Callable[..., tuple[Any, list[int]]], xs: LocalXenstore
    ) -> None:
        self.builder = builder
        self.hypercall = hypercall
        self.xs = xs
        self.domains: dict[int, BuiltDomain] = {}
        self.vchan_policy = VchanPolicy(xs)  # the vchan pairs the running domains' configs allow
        self._by_name: dict[str, BuiltDomain] = {}  # so neither a create nor a find walks every domain
        self.fd_budget = FdBudget(DOMAIN_FDS, "dom0")
        # Domains whose on_* action ran; a later VIRQ_DOM_EXC for them changes nothing.
        self._handled_shutdown: set[int] = set()
        # The creates waiting for their guest's report, by the domid awaited.
        self._starting: dict[int, StartReport] = {}
        # Set by `down`: a domain that shuts down now is left for the hypervisor to free with the
        # host (no on_* action, no teardown one at a time), as no restart could outlive it anyway.
        self.host_stopping = False

    # -- the table -------------------------------------------------------------------

    def find(self, spec: Any) -> BuiltDomain:
        """A domU by name or id, as xl accepts either."""
        text = str(spec)
        if text.isdigit() and int(text) in self.domains:  # a number is a domid first, as xl's find_domain has it
            return self.domains[int(text)]
        if text in self._by_name:
            return self._by_name[text]
        if text in ("0", "Domain-0"):
            raise ToolstackError(
                "Domain-0 runs xenlike's toolstack: it is not shut down, rebooted, paused, renamed, given devices "
                "or attached to on its own; `xenlike down` stops the host"
            )
        raise ToolstackError(f"no domain {text!r}; `xenlike list` shows the domains")

    def domain_infos(self) -> list[dict]:
        """``getdomaininfo`` of every domain the hypervisor knows, dom0 included."""
        return self.hypercall("domctl", cmd="getdomaininfo")[0]

    def domain_list(self) -> dict[str, list]:
        """``getdomaininfolist``: xl list's fields of every domain, dom0 included, as columns
        (``xenlike.public.domctl.DOMAININFOLIST_COLUMNS``)."""
        return self.hypercall("sysctl", cmd="getdomaininfolist")[0]

    def create(
        self,
        config: dict,
        paused: bool = False,
        uuid: str | None = None,
        restore: Callable[[BuiltDomain], dict[str, Any]] | None = None,
        precreated: tuple[dict[str, Any], int] | None = None,
    ) -> BuiltDomain:
        """Build a domain from a validated config; its name must be free (``restore``, ``precreated``: see the
        builder)."""
        if config["name"] in self._by_name:
            raise ToolstackError(f"a domain named {config['name']!r} already exists")
        refusal = self.fd_budget.refusal(config["name"])
        if refusal is not None:  # before the hypervisor is asked for anything
            raise ToolstackError(refusal)
        built = self.builder.create(config, paused=paused, uuid=uuid, restore=restore, precreated=precreated)
        self.domains[built.domid] = built
        self._by_name[built.name] = built
        self.vchan_policy.domain_added(built, self._by_name)
        return built

    def rename(self, built: BuiltDomain, name: str) -> None:
        """Give a domU another name (the caller checked it is free)."""
        old = built.name
        self.builder.rename(built, name)
        if self._by_name.get(old) is built:
            del self._by_name[old]
        self._by_name[name] = built

    def destroy(self, built: BuiltDomain) -> None:
        self.builder.destroy(built)
        self._forget(built)

    def resumed(self, built: BuiltDomain) -> None:
        """A suspended domain runs again (its suspend was cancelled): its next shutdown gets its on_* action."""
        self._handled_shutdown.discard(built.domid)

    def settled(self, domid: int, info: dict | None) -> bool:
        """Whether a domain needs nothing more of the toolstack (what ``shutdown -w`` and ``down`` wait for).

        It is gone (``info``, its ``getdomaininfo``, is None), or it shut down and
        was forgotten or had its on_* action applied.
        """
        if info is None:
            return True
        return bool(info["shutdown"]) and (domid not in self.domains or domid in self._handled_shutdown)

    def has_shut_down(self, domid: int) -> bool:
        """Whether the toolstack saw ``domid`` shut down (and applied its on_* action, or the host is stopping)."""
        return domid in self._handled_shutdown

    def _forget(self, built: BuiltDomain, destroyed_elsewhere: bool = False) -> None:
        self.domains.pop(built.domid, None)
        self.vchan_policy.domain_removed(built)
        if self._by_name.get(built.name) is built:
            del self._by_name[built.name]
        self._handled_shutdown.discard(built.domid)
        report = self._starting.pop(built.domid, None)
        if report is not None:
            how = "vanished (destroyed outside the toolstack)" if destroyed_elsewhere else "was destroyed"
            report.failures.append((built.domid, f"it {how} before its workload reported starting"))
            report.state = workload_state.FAILED
        if destroyed_elsewhere:
            log.warning("%s: vanished; cleaning up after it", built.label)
            self.builder.destroy(built)

    # -- the guest's report of its workload starting --------------------------------

    def await_start(self, built: BuiltDomain) -> StartReport:
        """Begin waiting for ``built``'s report (``~/workload/state``); :meth:`start_settled` says when it came."""
        report = StartReport(built.name, built.domid)
        self._starting[built.domid] = report
        return report

    def start_settled(self, report: StartReport) -> bool:
        """Whether ``report`` has its answer: the workload started, or no domain of its create runs.

        A guest that reports ``failed`` is about to shut down; the answer waits for
        that, so it can say what ``on_crash`` did.
        """
        if report.state == PENDING and self._read_state(report.domid) == workload_state.STARTED:
            self._starting.pop(report.domid, None)
            report.state = workload_state.STARTED
        return report.state != PENDING

    def stop_awaiting(self, report: StartReport) -> None:
        """The create answers without its report (timed out): forget it, with the guest's failure if it wrote one."""
        if self._starting.get(report.domid) is report:
            del self._starting[report.domid]
        if report.state == PENDING and self._read_state(report.domid) == workload_state.FAILED:
            report.failures.append((report.domid, self._read_error(report.domid)))
            report.state = workload_state.FAILED
            report.end = "it has not shut down yet"

    def _read_state(self, domid: int) -> str | None:
        try:
            return self.xs.read(f"{home_path(domid)}/{workload_state.STATE}").decode(errors="replace")
        except XsError:
            return None

    def _read_error(self, domid: int) -> str:
        try:
            text = self.xs.read(f"{home_path(domid)}/{workload_state.ERROR}").decode(errors="replace")
        except XsError:
            text = ""
        return workload_state.one_line(text) or "its guest gave no reason"  # the guest's words: one printable line

    def _note_shutdown(self, report: StartReport, built: BuiltDomain, info: dict) -> None:
        """A domain whose create awaits its report shut down: read the report while its nodes exist."""
        state = self._read_state(built.domid)
        if state == workload_state.STARTED:  # it started, then shut down
            report.state = workload_state.STARTED
        elif state == workload_state.FAILED:
            report.failures.append((built.domid, self._read_error(built.domid)))
        else:
            how = info.get("exit") or "shut down"
            report.failures.append(
                (built.domid, f"it ended before its workload started ({how}); its console is in logs/{built.name}.log")
            )

    # -- domain exceptions and on_* actions ----------------------------------------

    def on_domain_exception(self) -> dict[int, dict | None]:
        """VIRQ_DOM_EXC: some domains changed state; ask the hypervisor which, and act.

        Only the changed domains are fetched (``get_changed_domains``, as
        xenstored polls ``xenmanage_poll_changed_domain``), so a death costs the
        same with 1 or 2,000 domains running. Returns each changed domain's
        ``getdomaininfo`` (None: gone), for the waiters it may settle.
        """
        changed = self.hypercall("domctl", cmd="get_changed_domains")[0]
        for row in changed:
            built = self.domains.get(row["domid"])
            info = row["info"]
            if built is None:
                continue
            if info is None:
                self._forget(built, destroyed_elsewhere=True)
            elif info["shutdown"] and built.domid not in self._handled_shutdown:
                self._handled_shutdown.add(built.domid)
                if self.host_stopping:
                    self._note_host_stop(built, _shutdown_reason_name(info["shutdown_reason"]), info)
                    continue
                self._apply_action(built, _shutdown_reason_name(info["shutdown_reason"]), info)
        return {row["domid"]: row["info"] for row in changed}

    def _note_host_stop(self, built: BuiltDomain, reason: str, info: dict) -> None:
        """A domain shut down while the host stops: its on_* action is logged, not carried out."""
        key = ACTION_KEYS.get(reason)
        action = (built.config.get(key) or ACTION_DEFAULTS[key]) if key else "none"
        log.info(
            "%s: %s; %s is %s, but the host is stopping: the hypervisor frees it with the host",
            built.label,
            _how_it_ended(reason, info.get("exit") or ""),
            key or "its action",
            action,
        )

    def _apply_action(self, built: BuiltDomain, reason: str, info: dict) -> None:
        key = ACTION_KEYS.get(reason)
        if key is None:  # suspend: nothing to do until resumed
            return
        report = self._starting.pop(built.domid, None)
        if report is not None:
            self._note_shutdown(report, built, info)
        action = built.config.get(key) or ACTION_DEFAULTS[key]
        log.info("%s: %s; %s is %s", built.label, _how_it_ended(reason, info.get("exit") or ""), key, action)
        restarted: BuiltDomain | None = None
        why_not = ""
        if action in ("destroy", "coredump-destroy"):
            self.destroy(built)
        elif action in ("restart", "coredump-restart"):
            restarted, why_not = self._restart(built)
        elif action == "soft-reset":
            log.info("%s: soft-reset acts as restart in xenlike (no guest is reset in place)", built.label)
            restarted, why_not = self._restart(built)
        elif action == "rename-restart":
            old_name = built.name
            self.rename(built, f"{old_name}-{built.domid}")
            restarted, why_not = self._restart(built, name=old_name)
        # preserve: leave it shut down for inspection (`xenlike destroy` removes it)
        if report is None or report.state == workload_state.STARTED:
            return
        if restarted is not None:  # the create goes on waiting, for the new domain
            report.domid = restarted.domid
            report.restarted += 1
            self._starting[restarted.domid] = report
            return
        report.state = workload_state.FAILED
        if action == "preserve" or action == "rename-restart":
            name = built.name
            report.end = f'it is kept shut down ({key} = "{action}"); `xenlike destroy {name}` removes it'
        if why_not:
            report.end = "; ".join(filter(None, [why_not, report.end]))

    def _restart(self, built: BuiltDomain, name: str | None = None) -> tuple[BuiltDomain | None, str]:
        """Build ``built`` again (under ``name`` for rename-restart): the new domain, or None and why not."""
        now = time.monotonic()
        recent = [t for t in built.restarts if now - t < RESTART_WINDOW_S]
        config = dict(built.config, name=name or built.name)
        keep_preserved = name is not None
        if not keep_preserved:
            self.destroy(built)
        if len(recent) >= MAX_RESTARTS:
            log.warning(
                "%s: restarted %d times in %.0fs; not restarting again", built.label, len(recent), RESTART_WINDOW_S
            )
            return None, (
                f"the toolstack stopped restarting it: {MAX_RESTARTS} restarts within "
                f"{RESTART_WINDOW_S:g}s is the most it allows"
            )
        try:
            new = self.create(config, uuid=None if keep_preserved else built.uuid)
        except Exception as exc:
            log.warning("%s: restart failed: %s", built.label, exc)
            return None, f"restarting it failed: {exc}"
        new.restarts = recent + [now]
        log.info("%s: restarted as d%d", built.label, new.domid)
        return new, ""
