"""The vchan key of a domain config, and dom0's directories for the pairs it allows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.vchan_policy import VchanPolicy
from xenlike.tools.config.domain import domain_config_from_xlcfg
from xenlike.tools.config.vchan import VchanRule, parse_vchan_rule
from xenlike.tools.config.xlcfg import ConfigError, parse_xlcfg


def _config(text: str):
    return domain_config_from_xlcfg(parse_xlcfg(f'name = "srv"\n{text}\n', "srv.cfg"), "srv.cfg")


def test_pairs_are_checked_and_kept():
    config = _config('vchan = ["client:5000", "backup:5001"]')
    assert config.vchan == ["client:5000", "backup:5001"] and not config.warnings
    assert parse_vchan_rule(" client:5000 ") == VchanRule("client", 5000)
    assert config.to_dict()["vchan"] == ["client:5000", "backup:5001"]
    assert _config("").vchan == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"client:5000"', "a \\[list\\]"),
        ('["client"]', 'not "client-name:port"'),
        ('["client:0"]', "outside 1..65535"),
        ('["client:70000"]', "outside 1..65535"),
        ('["7:5000"]', "names a domid"),
        ('["srv:5000"]', "names this domain"),
        ('["Domain-0:5000"]', "dom0 is not a vchan peer"),
        ('["a:1", "a:1"]', "listed twice"),
        ("[5000]", "not a string"),
    ],
)
def test_a_bad_pair_is_refused_naming_the_key_and_the_fix(value, message):
    with pytest.raises(ConfigError, match=message) as err:
        _config(f"vchan = {value}")
    assert str(err.value).startswith("vchan in srv.cfg")


class _Store:
    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, list[str] | None]] = {}

    def write(self, path, value, perms=None, tx=0):
        self.nodes[path] = (value, list(perms) if perms else None)

    def rm(self, path, tx=0):
        for key in [k for k in self.nodes if k == path or k.startswith(path + "/")]:
            del self.nodes[key]


def _built(domid, name, vchan=()):
    return SimpleNamespace(domid=domid, name=name, label=f"d{domid} ({name})", config={"vchan": list(vchan)})


def test_the_directories_appear_when_both_run_and_go_with_either():
    store = _Store()
    policy = VchanPolicy(store)
    server = _built(3, "srv", ["cli:5000"])
    policy.domain_added(server, {d.name: d for d in [server]})
    assert store.nodes == {"/local/domain/3/data/vchan": ("", ["n0", "r3"])}  # no client yet
    client, other = _built(4, "cli"), _built(5, "other")
    policy.domain_added(client, {d.name: d for d in [server, client]})
    policy.domain_added(other, {d.name: d for d in [server, client, other]})
    assert store.nodes["/local/domain/3/data/vchan/4"] == ("", ["n0", "r3"])
    assert store.nodes["/local/domain/3/data/vchan/4/5000"] == ("", ["n3", "r4"])
    assert store.nodes["/local/domain/4/vchan/srv"] == ("3", ["n0", "r4"])
    assert store.nodes["/local/domain/3/vchan/cli"] == ("4", ["n0", "r3"])
    assert not any(p.startswith(("/local/domain/3/data/vchan/5", "/local/domain/5/vchan")) for p in store.nodes)
    policy.domain_removed(client)
    assert "/local/domain/3/data/vchan/4" not in store.nodes and "/local/domain/3/vchan/cli" not in store.nodes


def test_a_pair_is_made_whichever_of_the_two_comes_first_and_costs_no_walk_over_the_others():
    store = _Store()
    policy = VchanPolicy(store)
    running = {f"idle{i}": _built(10 + i, f"idle{i}") for i in range(50)}
    client = running["cli"] = _built(4, "cli")
    policy.domain_added(client, running)
    writes = len(store.nodes)
    server = running["srv"] = _built(3, "srv", ["cli:5000"])
    policy.domain_added(server, running)
    assert store.nodes["/local/domain/3/data/vchan/4/5000"] == ("", ["n3", "r4"])
    assert len(store.nodes) - writes == 5  # the server's data/vchan, the pair's two directories, the two names
    policy.domain_removed(server)
    assert "/local/domain/4/vchan/srv" not in store.nodes
