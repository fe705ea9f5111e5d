"""Cluster files: a host and several domains in one TOML file.

    [host]                  # optional; command-line options win over it
    memory = 2048           # MiB of the host's memory pool for domains
    pcpus = 2               # pCPUs the scheduler uses
    sched = "credit"        # scheduler (entry-point group xenlike.schedulers)

    [[domain]]              # xl.cfg(5) keys, with TOML values
    name = "web"
    memory = 64
    workload = "ticker"
    workload_args = ["--interval", "1"]
    disk = ["vdev=xvda, size=64M, target=web.img"]

    [[domain]]
    config = "db.cfg"       # an xl.cfg file, relative to this file; the keys here override it
    count = 3               # three copies, named db-1, db-2, db-3

Relative paths (``config``, disk targets, ``path/file.py:function``
workloads) are relative to the file that names them. Domain names (and
UUIDs) must be unique across the cluster. With no file, ``xenlike up`` runs
the embedded default cluster, ``default-cluster.toml``.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenlike.public.xen import DOMID_MAX
from xenlike.tools.config.domain import INT_MAX, DomainConfig, domain_config_from_sources, read_xlcfg
from xenlike.tools.config.xlcfg import ConfigError, Settings, format_value, read_config_text

__all__ = ["Cluster", "default_cluster", "load_cluster", "parse_cluster"]

HOST_KEYS = ("memory", "pcpus", "sched")
MAX_COUNT = DOMID_MAX  # the number of domU ids a host has (1..DOMID_MAX)


@dataclass
class Cluster:
    """The domains of a cluster file, in file order, and its ``[host]`` settings.

    ``host`` holds only the keys the file gave (``memory`` in MiB, ``pcpus``,
    ``sched``).
    """

    domains: list[DomainConfig] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def warnings(self) -> list[str]:
        """Every domain's warnings, in order."""
        return [warning for domain in self.domains for warning in domain.warnings]


def _host(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"host = {format_value(data)} in {source}: expected a [host] table")
    unknown = sorted(set(data) - set(HOST_KEYS))
    if unknown:
        raise ConfigError(f"[host] in {source}: unknown key {unknown[0]!r}; expected {', '.join(HOST_KEYS)}")
    for key in ("memory", "pcpus"):
        value = data.get(key)
        if key in data and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT_MAX):
            unit = " of MiB" if key == "memory" else ""
            raise ConfigError(
                f"[host] {key} = {format_value(value)} in {source}: expected a positive whole number{unit}"
            )
    if "sched" in data and (not isinstance(data["sched"], str) or not data["sched"]):
        raise ConfigError(
            f'[host] sched = {format_value(data["sched"])} in {source}: expected a scheduler name such as "credit"'
        )
    return dict(data)


def _domains_of(table: Any, where: str, base_dir: Path) -> list[DomainConfig]:
    """The domain(s) of one ``[[domain]]`` table: its keys over those of its ``config`` file."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of xl.cfg keys")
    settings = dict(table)
    count = settings.pop("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"count = {format_value(count)} in {where}: expected a whole number from 1 to {MAX_COUNT}")
    config = settings.pop("config", None)
    from_file = Settings(where)
    file_dir = base_dir
    if config is not None:
        if not isinstance(config, str) or not config:
            raise ConfigError(f"config = {format_value(config)} in {where}: expected the path of an xl.cfg file")
        path = base_dir / Path(config).expanduser()
        try:
            from_file = read_xlcfg(path)
        except ConfigError as exc:
            raise ConfigError(f"config = {format_value(config)} in {where}: {exc}") from None
        file_dir = path.parent
    merged = {**from_file, **settings}

    def where_set(key: str) -> str:
        return from_file.where(key) if key in from_file and key not in settings else where

    def directory(key: str) -> Path:
        return file_dir if key in from_file and key not in settings else base_dir

    if count == 1:
        return [domain_config_from_sources(merged, where, where_set, directory)]
    if "uuid" in merged:
        raise ConfigError(
            f"uuid = {format_value(merged['uuid'])} in {where_set('uuid')}: expected no uuid with "
            f"count = {count} (each copy needs its own)"
        )
    first = domain_config_from_sources(merged, where, where_set, directory)
    return [
        domain_config_from_sources({**merged, "name": f"{first.name}-{i}"}, where, where_set, directory)
        for i in range(1, count + 1)
    ]


def parse_cluster(text: str, source: str = "<cluster>", base_dir: Path | str | None = None) -> Cluster:
    """Parse cluster TOML text; relative paths in it are relative to ``base_dir`` (default: the current directory).

    Raises :class:`ConfigError` naming the file, the ``[[domain]]`` table (1
    for the first), the key, the value and what was expected; two domains
    with one name (or UUID) are an error naming both tables.
    """
    directory = Path(base_dir) if base_dir is not None else Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"host", "domain"})
    if unknown:
        raise ConfigError(f"{source}: unknown key or table {unknown[0]!r}; expected [host] and [[domain]] tables")
    host = _host(data.get("host", {}), source)
    tables = data.get("domain", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: domains are written [[domain]] (an array of tables), not [domain]")
    domains: list[DomainConfig] = []
    for index, table in enumerate(tables, start=1):
        domains.extend(_domains_of(table, f"{source} [[domain]] {index}", directory))
    names: dict[str, str] = {}
    uuids: dict[str, str] = {}
    for domain in domains:
        if domain.name in names:
            raise ConfigError(
                f"domain name {format_value(domain.name)} is used twice: by {names[domain.name]} and by {domain.source}"
            )
        names[domain.name] = domain.source
        if domain.uuid is not None:
            if domain.uuid in uuids:
                raise ConfigError(f"uuid {domain.uuid} is used twice: by {uuids[domain.uuid]} and by {domain.source}")
            uuids[domain.uuid] = domain.source
    return Cluster(domains, host, source)


def load_cluster(path: Path | str) -> Cluster:
    """Read a cluster file (see the module docstring); paths in it are relative to its directory."""
    return parse_cluster(read_config_text(path, "cluster file"), str(path), Path(path).parent)


def default_cluster(base_dir: Path | str | None = None) -> Cluster:
    """The cluster ``xenlike up`` runs when given no file (``default-cluster.toml``, package data).

    Its relative disk images live in ``base_dir`` (default: the current directory).
    """
    resource = importlib.resources.files("xenlike.tools.config").joinpath("default-cluster.toml")
    text = resource.read_text(encoding="utf-8")
    return parse_cluster(text, "the default cluster", base_dir)
