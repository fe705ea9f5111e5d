"""Domain configuration: xl.cfg files, disk and vif specs, TOML cluster files."""

from .cluster import Cluster, default_cluster, load_cluster, parse_cluster
from .disk import DiskSpec, parse_disk_spec, vdev_to_devid
from .domain import DomainConfig, domain_config_from_settings, load_domain_config, parse_cpus
from .vif import VifSpec, parse_vif_spec
from .xlcfg import ConfigError, parse_override, parse_xlcfg

__all__ = [
    "ConfigError",
    "Cluster",
    "DomainConfig",
    "DiskSpec",
    "VifSpec",
    "default_cluster",
    "load_cluster",
    "parse_cluster",
    "load_domain_config",
    "domain_config_from_settings",
    "parse_disk_spec",
    "parse_vif_spec",
    "parse_xlcfg",
    "parse_override",
    "parse_cpus",
    "vdev_to_devid",
]
