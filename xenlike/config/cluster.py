"""Cluster files: several domains (and the host's settings) in one TOML file.

    [host]
    memory = 2048          # MiB for domains (xenlike up --memory)
    pcpus = 2

    [[domain]]
    name = "web"
    memory = 64
    workload = "ticker"
    workload_args = ["--interval", "1"]

    [[domain]]
    config = "db.cfg"      # an xl.cfg file, relative to this file
    count = 3              # db-1, db-2, db-3

Each ``[[domain]]`` table takes xl.cfg keys with TOML values. With no file,
``xenlike up`` uses the embedded default cluster (``default-cluster.toml``).
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .domain import DomainConfig, domain_config_from_settings
from .xlcfg import ConfigError, parse_xlcfg

__all__ = ["Cluster", "load_cluster", "parse_cluster", "default_cluster"]

HOST_KEYS = {"memory", "pcpus", "sched"}


@dataclass
class Cluster:
    domains: list[DomainConfig]
    host: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def warnings(self) -> list[str]:
        return [w for d in self.domains for w in d.warnings]


def parse_cluster(text: str, source: str, base_dir: Path) -> Cluster:
    """Parse cluster TOML; ConfigError names the file, the domain and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown = set(data) - {"host", "domain"}
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(sorted(unknown))}; expected [host] and [[domain]]")
    host = data.get("host", {})
    if not isinstance(host, dict) or set(host) - HOST_KEYS:
        raise ConfigError(f"{source}: [host] takes {', '.join(sorted(HOST_KEYS))}")
    for key in ("memory", "pcpus"):
        if key in host and (not isinstance(host[key], int) or host[key] < 1):
            raise ConfigError(f"[host] {key} = {host[key]!r} in {source}: expected a positive whole number")
    tables = data.get("domain", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: domains are [[domain]] tables")
    domains: list[DomainConfig] = []
    for index, table in enumerate(tables):
        domains.extend(_domains_of(table, f"{source} [[domain]] #{index + 1}", base_dir))
    seen: dict[str, str] = {}
    for domain in domains:
        if domain.name in seen:
            raise ConfigError(f"domain name {domain.name!r} is used twice: in {seen[domain.name]} and {domain.source}")
        seen[domain.name] = domain.source
    return Cluster(domains, host, source)


def _domains_of(table: dict[str, Any], where: str, base_dir: Path) -> list[DomainConfig]:
    """The domain(s) of one ``[[domain]]`` table: its keys over those of its ``config`` file."""
    settings = dict(table)
    count = settings.pop("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"count = {count!r} in {where}: expected a positive whole number")
    config_file = settings.pop("config", None)
    if config_file is not None:
        path = base_dir / config_file
        try:
            parsed = parse_xlcfg(path.read_text(), str(path))
        except OSError as exc:
            raise ConfigError(f"config = {config_file!r} in {where}: cannot read {path}: {exc.strerror}") from None
        settings = {**parsed.settings, **settings}
    one = domain_config_from_settings(settings, where, base_dir=base_dir)
    if count == 1:
        return [one]
    return [domain_config_from_settings({**settings, "name": f"{one.name}-{i}"}, where, base_dir=base_dir)
            for i in range(1, count + 1)]


def load_cluster(path: Path) -> Cluster:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc.strerror}") from None
    return parse_cluster(text, str(path), Path(path).parent)


def default_cluster(base_dir: Path = Path(".")) -> Cluster:
    """The cluster ``xenlike up`` runs when given no file; its images go in ``base_dir``."""
    resource = importlib.resources.files("xenlike.config") / "default-cluster.toml"
    return parse_cluster(resource.read_text(), "the default cluster", base_dir)
