"""Cluster files: TOML with a [host] table and [[domain]] tables of xl.cfg keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenlike.tools.config import Cluster, ConfigError, default_cluster, load_cluster, parse_cluster


def test_the_default_cluster_shows_the_system_working(tmp_path: Path):
    cluster = default_cluster(tmp_path)
    domains = {domain.name: domain for domain in cluster.domains}
    assert list(domains)[:3] == ["hello", "ticker", "echo"]
    assert [(domains[n].workload, domains[n].memory) for n in ("hello", "ticker", "echo")] == [
        ("hello", 16), ("ticker", 16), ("echo", 16)]
    assert domains["ticker"].workload_args == ["--interval", "1"]
    assert cluster.host == {} and cluster.warnings == []
    for domain in cluster.domains:  # images the default cluster names live in the given directory
        assert all(Path(disk.target).parent == tmp_path for disk in domain.disk)


def test_host_count_and_config_file(tmp_path: Path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "db.cfg").write_text(
        'name = "db"\nmemory = 24\nworkload = "w.py:run"\ndisk = ["vdev=xvda, size=1M, target=db.img"]\n'
        "colour = 3\n")
    text = """
[host]
memory = 512
pcpus = 1
sched = "null"

[[domain]]
name = "web"
workload = "ticker"
workload_args = ["--interval", 2]
cpus = [0, "1"]
disk = ["vdev=xvda, target=web.img"]

[[domain]]
config = "cfg/db.cfg"
count = 2
memory = 20
"""
    cluster = parse_cluster(text, "c.toml", tmp_path)
    assert cluster.host == {"memory": 512, "pcpus": 1, "sched": "null"}
    assert [domain.name for domain in cluster.domains] == ["web", "db-1", "db-2"]
    web, db1, db2 = cluster.domains
    assert (web.workload_args, web.cpus, web.disk[0].target) == (["--interval", "2"], frozenset({0, 1}),
                                                                 str(tmp_path / "web.img"))
    assert (db1.memory, db2.memory) == (20, 20)  # the table's keys override the file's
    assert db1.workload == f"{tmp_path / 'cfg' / 'w.py'}:run"  # relative to the file that names it
    assert db1.disk[0].target == str(tmp_path / "cfg" / "db.img")
    assert db1.warnings == [f"unknown key 'colour' in {tmp_path / 'cfg' / 'db.cfg'} line 5, ignored"]
    assert cluster.warnings == db1.warnings + db2.warnings
    assert (web.source, db2.source) == ("c.toml [[domain]] 1", "c.toml [[domain]] 2")


def test_unknown_domain_keys_warn_with_their_table(tmp_path: Path):
    cluster = parse_cluster('[[domain]]\nname = "a"\nkernel = "/boot/x"\nfoo = 1\n', "c.toml", tmp_path)
    assert cluster.warnings == [
        "key 'kernel' in c.toml [[domain]] 1 is an xl setting xenlike does not use, ignored",
        "unknown key 'foo' in c.toml [[domain]] 1, ignored",
    ]


def test_load_a_file_and_an_empty_one(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[[domain]]\nname = "a"\ndisk = ["a.img,,xvda"]\n')
    cluster = load_cluster(path)
    assert isinstance(cluster, Cluster) and cluster.source == str(path)
    assert cluster.domains[0].disk[0].target == str(tmp_path / "a.img")
    assert load_cluster("/dev/null").domains == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ('[[domain]]\nname = "a"\n[[domain]]\nname = "a"\n',
         'domain name "a" is used twice: by c.toml [[domain]] 1 and by c.toml [[domain]] 2'),
        ('[[domain]]\nname = "a-2"\n[[domain]]\nname = "a"\ncount = 2\n',
         'domain name "a-2" is used twice: by c.toml [[domain]] 1 and by c.toml [[domain]] 2'),
        ('[[domain]]\nname = "a"\nuuid = "3f2b9c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6f"\n'
         '[[domain]]\nname = "b"\nuuid = "3F2B9C1E-5D4A-4E7B-9C0D-1A2B3C4D5E6F"\n', "is used twice"),
        ('[[domain]]\nname = "a"\nuuid = "3f2b9c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6f"\ncount = 2\n',
         "expected no uuid with count = 2"),
        ('[[domain]]\nname = "a"\nmemory = "big"\n',
         'memory = "big" in c.toml [[domain]] 1: expected a whole number of MiB'),
        ('[[domain]]\nmemory = 16\n', "c.toml [[domain]] 1 has no name"),
        ('[[domain]]\nname = "a"\ncount = 0\n', "count = 0 in c.toml [[domain]] 1: expected a whole number from 1"),
        ('[[domain]]\nname = "a"\ncount = true\n', "count = true in c.toml [[domain]] 1"),
        ('[[domain]]\nname = "a"\nconfig = 5\n', "config = 5 in c.toml [[domain]] 1: expected the path"),
        ('[[domain]]\nconfig = "missing.cfg"\n', 'config = "missing.cfg" in c.toml [[domain]] 1: cannot read'),
        ('[servers]\nx = 1\n', "c.toml: unknown key or table 'servers'; expected [host] and [[domain]] tables"),
        ('[domain]\nname = "a"\n', "domains are written [[domain]] (an array of tables), not [domain]"),
        ('domain = [1]\n', "c.toml [[domain]] 1: expected a table of xl.cfg keys"),
        ('[host]\nmemory = -1\n', "[host] memory = -1 in c.toml: expected a positive whole number of MiB"),
        ('[host]\npcpus = "two"\n', '[host] pcpus = "two" in c.toml: expected a positive whole number'),
        ('[host]\nsched = 3\n', "[host] sched = 3 in c.toml: expected a scheduler name"),
        ('[host]\nram = 3\n', "[host] in c.toml: unknown key 'ram'; expected memory, pcpus, sched"),
        ('host = 3\n', "host = 3 in c.toml: expected a [host] table"),
        ('[[domain]\n', "c.toml: not valid TOML"),
    ],
)
def test_bad_cluster_files_name_the_file_the_table_and_the_problem(text, problem, tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        parse_cluster(text, "c.toml", tmp_path)
    assert problem in str(err.value)


def test_errors_in_a_config_file_name_that_file(tmp_path: Path):
    (tmp_path / "bad.cfg").write_text('name = "a"\nmemory = "lots"\n')
    with pytest.raises(ConfigError, match=f'memory = "lots" in {tmp_path / "bad.cfg"} line 2: expected'):
        parse_cluster('[[domain]]\nconfig = "bad.cfg"\n', "c.toml", tmp_path)
    (tmp_path / "broken.cfg").write_text("name = a\n")
    with pytest.raises(ConfigError, match="broken.cfg line 1 column 8"):
        parse_cluster('[[domain]]\nconfig = "broken.cfg"\n', "c.toml", tmp_path)


def test_unreadable_cluster_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read cluster file"):
        load_cluster(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'[[domain]]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_cluster(tmp_path / "latin1.toml")
