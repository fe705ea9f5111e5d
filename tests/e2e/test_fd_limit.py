"""At the host's file-descriptor limit a create is refused in one line naming it, and the host goes on.

The limit is the one ``xenlike up`` inherits (``ulimit -n``, here set with
``setrlimit`` for the ``up`` process alone): the hypervisor and dom0 raise their
soft limit to it, and each guest's jail lowers its own beneath it. So low a limit
lets only a few guests fit.
"""

from __future__ import annotations

import resource
import subprocess
import sys

from .test_lifecycle import write_cluster

NOFILE = 150
GUEST = {"memory": 4, "workload": "idle"}


def _up_with_nofile(host, cluster) -> subprocess.CompletedProcess:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    result = subprocess.run(
        [sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "up", "-d", "--memory", "1024", str(cluster)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lower,
    )
    host.hypervisor_pid = host.run_dir.running_pid()
    return result


def test_at_the_fd_limit_a_create_is_refused_in_one_line_and_the_host_still_works(host, tmp_path):
    up = _up_with_nofile(host, write_cluster(tmp_path, [{"name": "first", **GUEST}]))
    assert up.returncode == 0, up.stderr
    fit = host.call("info")["max_new_domains"]
    assert "fds (RLIMIT_NOFILE)" in fit["limit"] and 0 < fit["count"] < 30, fit

    made, refusal = [], None
    with host.client() as client:
        for i in range(fit["count"] + 5):
            try:
                reply = client.call("create", config={"name": f"g{i}", **GUEST})
            except Exception as exc:
                refusal = str(exc)
                break
            assert reply["start"]["state"] == "started", reply
            made.append(reply["name"])
    assert refusal is not None, f"{len(made)} guests made under a limit of {NOFILE} fds, none refused"
    assert len(made) >= fit["count"] - 1  # what info promised (give or take dom0's sockets of this client)
    assert "\n" not in refusal and f"of its {NOFILE} (RLIMIT_NOFILE" in refusal, refusal
    assert "ulimit -n" in refusal

    cli = host.xl("create", "/dev/null", "name=late", "memory=4", "workload=idle", check=False)
    assert cli.returncode != 0
    assert len(cli.stderr.strip().splitlines()) == 1 and "RLIMIT_NOFILE" in cli.stderr, cli.stderr
    info = host.xl("info").stdout
    assert any(
        line.split(":")[0].strip() == "max_new_domains" and line.split(":")[1].split()[0] == "0"
        for line in info.splitlines()
    ), info

    # The host still works: it lists, destroys, and makes a guest again where one was freed.
    assert set(made) <= set(host.domains())
    host.xl("destroy", made[0])
    host.xl("destroy", made[1])
    again = host.call("create", config={"name": "again", **GUEST})
    assert again["start"]["state"] == "started"
    assert "again" in host.xl("list").stdout
    assert "Traceback" not in host.log("hypervisor") + host.log("dom0")
