"""Domain configuration: xl.cfg files, disk and vif specs, TOML cluster files.

* :mod:`.xlcfg` — the xl.cfg(5) syntax (:func:`parse_xlcfg`, command-line overrides);
* :mod:`.disk` — xl-disk-configuration(5) specs (:class:`DiskSpec`);
* :mod:`.vif` — xl-network-configuration(5) specs (:class:`VifSpec`);
* :mod:`.domain` — the keys a domain uses, checked (:class:`DomainConfig`);
* :mod:`.cluster` — TOML files listing a host and several domains (:class:`Cluster`).

Every problem is a :class:`ConfigError` whose message is meant for the user.
"""

from xenlike.tools.config.cluster import Cluster, default_cluster, load_cluster, parse_cluster
from xenlike.tools.config.disk import DiskSpec, parse_disk_spec, vdev_to_devid
from xenlike.tools.config.domain import (
    DomainConfig,
    domain_config_from_xlcfg,
    load_domain_config,
    parse_cpus,
)
from xenlike.tools.config.vif import VifSpec, parse_vif_spec
from xenlike.tools.config.xlcfg import (
    ConfigError,
    Settings,
    apply_overrides,
    format_value,
    parse_override,
    parse_xlcfg,
)

__all__ = [
    "Cluster",
    "ConfigError",
    "DiskSpec",
    "DomainConfig",
    "Settings",
    "VifSpec",
    "apply_overrides",
    "default_cluster",
    "domain_config_from_xlcfg",
    "format_value",
    "load_cluster",
    "load_domain_config",
    "parse_cluster",
    "parse_cpus",
    "parse_disk_spec",
    "parse_override",
    "parse_vif_spec",
    "parse_xlcfg",
    "vdev_to_devid",
]
