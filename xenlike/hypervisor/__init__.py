"""The hypervisor process: ``python -m xenlike.hypervisor`` (started by ``xenlike up``)."""

from .core import Hypervisor
from .domain import Domain, ShutdownReason

__all__ = ["Hypervisor", "Domain", "ShutdownReason"]
