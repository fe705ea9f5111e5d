"""docker-compose.yml's two-host pool: each host listens for migrations, shares one disk volume, and its
cluster file loads with every disk on that volume."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenlike.public.migration_channel import parse_address
from xenlike.tools.config import load_cluster

ROOT = Path(__file__).resolve().parents[2]
IMAGES = "/var/lib/xenlike/images"


def test_the_pool_hosts_listen_share_images_and_load_their_clusters():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("host-a", "host-b"):
        service = services[name]
        command = service["command"]
        assert command[0] == "up" and "-d" not in command  # the container lives as long as `up` does
        parse_address(command[command.index("--listen") + 1])
        mounts = dict(volume.split(":", 1) for volume in service["volumes"])
        assert mounts["pool-images"] == IMAGES
        cluster_file = next(src for src, dst in mounts.items() if dst.startswith(command[1]))
        cluster = load_cluster(ROOT / cluster_file)
        for domain in cluster.domains:
            for disk in domain.to_dict().get("disk", []):
                assert disk["target"].startswith(IMAGES + "/"), (name, domain.name, disk["target"])
