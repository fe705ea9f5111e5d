"""The hypervisor process: ``python -m xenlike.hypervisor`` (started by ``xenlike up``)."""

from xenlike.hypervisor.core import Hypervisor
from xenlike.hypervisor.domain import Domain

__all__ = ["Hypervisor", "Domain"]
