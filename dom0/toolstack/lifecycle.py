"""The domUs the toolstack built, and what becomes of one that shuts down.

When the hypervisor raises ``VIRQ_DOM_EXC`` (a domain shut down or vanished),
the toolstack asks which domains changed and applies the domain's
``on_poweroff``/``on_reboot``/``on_crash``/``on_watchdog``/``on_soft_reset``
action from its xl.cfg: destroy, restart, rename-restart or preserve. This is
libxl's domain death handling (``libxl_evenable_domain_death``) with xl's policy
on top (``handle_domain_death`` in ``tools/xl/xl_vmcontrol.c``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from xenlike.public.xen import ShutdownReason

from ..builder import BuiltDomain, DomainBuilder
from .request import ToolstackError

__all__ = ["Lifecycle"]

log = logging.getLogger("dom0.toolstack")

# The xl.cfg key that says what to do for each shutdown reason, and xl's default.
ACTION_KEYS = {"poweroff": "on_poweroff", "reboot": "on_reboot", "crash": "on_crash", "watchdog": "on_watchdog",
               "soft_reset": "on_soft_reset"}
ACTION_DEFAULTS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_crash": "destroy", "on_watchdog": "destroy",
                   "on_soft_reset": "restart"}
# A domain restarted this often within RESTART_WINDOW_S is not restarted again.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 10.0


def _shutdown_reason_name(reason: Any) -> str:
    """``poweroff``, ``reboot``, ... for a ``SHUTDOWN_*`` code; one xenlike does not know counts as a crash."""
    try:
        return ShutdownReason(reason).name.lower()
    except ValueError:
        return "crash"


class Lifecycle:
    """The domU table: create, find, destroy, and the on_* actions when a domain shuts down.

    ``hypercall(op, **args)`` is dom0's hypercall channel; ``builder`` builds and
    tears down the domains.
    """

    def __init__(self, builder: DomainBuilder, hypercall: Callable[..., tuple[Any, list[int]]]) -> None:
        self.builder = builder
        self.hypercall = hypercall
        self.domains: dict[int, BuiltDomain] = {}
        # Domains whose on_* action ran; a later VIRQ_DOM_EXC for them changes nothing.
        self._handled_shutdown: set[int] = set()

    # -- the table -------------------------------------------------------------------

    def find(self, spec: Any) -> BuiltDomain:
        """A domU by name or id, as xl accepts either."""
        text = str(spec)
        for domain in self.domains.values():
            if domain.name == text or str(domain.domid) == text:
                return domain
        if text in ("0", "Domain-0"):
            raise ToolstackError("Domain-0 cannot be the target of this operation")
        raise ToolstackError(f"no domain {text!r}; `xenlike list` shows the domains")

    def domain_infos(self) -> list[dict]:
        """``getdomaininfo`` of every domain the hypervisor knows, dom0 included."""
        return self.hypercall("domctl", cmd="getdomaininfo")[0]

    def create(self, config: dict, paused: bool = False, uuid: str | None = None) -> BuiltDomain:
        """Build a domain from a validated config; its name must be free."""
        if any(d.name == config["name"] for d in self.domains.values()):
            raise ToolstackError(f"a domain named {config['name']!r} already exists")
        built = self.builder.create(config, paused=paused, uuid=uuid)
        self.domains[built.domid] = built
        return built

    def destroy(self, built: BuiltDomain) -> None:
        self.builder.destroy(built)
        self._forget(built)

    def settled(self, domid: int, info: dict | None) -> bool:
        """Whether a domain needs nothing more of the toolstack (what ``shutdown -w`` and ``down`` wait for).

        It is gone (``info``, its ``getdomaininfo``, is None), or it shut down and
        was forgotten or had its on_* action applied.
        """
        if info is None:
            return True
        return bool(info["shutdown"]) and (domid not in self.domains or domid in self._handled_shutdown)

    def _forget(self, built: BuiltDomain, destroyed_elsewhere: bool = False) -> None:
        self.domains.pop(built.domid, None)
        self._handled_shutdown.discard(built.domid)
        if destroyed_elsewhere:
            log.warning("%s: vanished; cleaning up after it", built.label)
            self.builder.destroy(built)

    # -- domain exceptions and on_* actions ----------------------------------------

    def on_domain_exception(self) -> None:
        """VIRQ_DOM_EXC: some domains changed state; ask the hypervisor which, and act.

        Only the changed domains are fetched (``get_changed_domains``, as
        xenstored polls ``xenmanage_poll_changed_domain``), so a death costs the
        same with 1 or 200 domains running.
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
                self._apply_action(built, _shutdown_reason_name(info["shutdown_reason"]), info)

    def _apply_action(self, built: BuiltDomain, reason: str, info: dict) -> None:
        key = ACTION_KEYS.get(reason)
        if key is None:  # suspend: nothing to do until resumed
            return
        action = built.config.get(key) or ACTION_DEFAULTS[key]
        log.info("%s: shut down (%s: %s); %s is %s", built.label, reason, info.get("exit", ""), key, action)
        if action in ("destroy", "coredump-destroy"):
            self.destroy(built)
        elif action in ("restart", "coredump-restart"):
            self._restart(built)
        elif action == "soft-reset":
            log.info("%s: soft-reset acts as restart in xenlike (no guest is reset in place)", built.label)
            self._restart(built)
        elif action == "rename-restart":
            old_name = built.name
            self.builder.rename(built, f"{old_name}-{built.domid}")
            self._restart(built, name=old_name)
        # preserve: leave it shut down for inspection (`xenlike destroy` removes it)

    def _restart(self, built: BuiltDomain, name: str | None = None) -> None:
        now = time.monotonic()
        recent = [t for t in built.restarts if now - t < RESTART_WINDOW_S]
        config = dict(built.config, name=name or built.name)
        keep_preserved = name is not None
        if not keep_preserved:
            self.destroy(built)
        if len(recent) >= MAX_RESTARTS:
            log.warning("%s: restarted %d times in %.0fs; not restarting again", built.label, len(recent),
                        RESTART_WINDOW_S)
            return
        try:
            new = self.create(config, uuid=None if keep_preserved else built.uuid)
        except Exception as exc:
            log.warning("%s: restart failed: %s", built.label, exc)
            return
        new.restarts = recent + [now]
        log.info("%s: restarted as d%d", built.label, new.domid)
