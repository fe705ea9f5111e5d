"""Domain configs: xl.cfg syntax, disk and vif specs, cluster files."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.config import (
    ConfigError,
    default_cluster,
    domain_config_from_settings,
    load_domain_config,
    parse_cluster,
    parse_cpus,
    parse_disk_spec,
    parse_override,
    parse_vif_spec,
    parse_xlcfg,
    vdev_to_devid,
)

# -- xl.cfg syntax ---------------------------------------------------------------------


def test_every_construct_parses():
    text = """
# a comment
name = "web"          # trailing comment
memory = 0x40; vcpus = 2
maxmem = 0100
extra = 'single \\'quoted\\''
disk = [ "a,raw,xvda,rw",
         'b,raw,xvdb,ro', ]
nested = [ [1, 2], [], ["x"] ]
disk += [ "c,raw,xvdc" ]
extra += " more"
"""
    parsed = parse_xlcfg(text, "web.cfg")
    assert parsed.settings == {
        "name": "web",
        "memory": 64,
        "vcpus": 2,
        "maxmem": 64,
        "extra": "single 'quoted' more",
        "disk": ["a,raw,xvda,rw", "b,raw,xvdb,ro", "c,raw,xvdc"],
        "nested": [[1, 2], [], ["x"]],
    }
    assert parsed.lines["memory"] == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = web\n', "strings are quoted"),
        ('name "web"\n', "expected '=' after name"),
        ('memory = 1 2\n', "end of the memory setting"),
        ('disk = ["a" "b"]\n', "',' or ']'"),
        ('name = "unterminated\n', "unexpected character"),
        ('= 3\n', "a setting name"),
    ],
)
def test_syntax_errors_name_line_and_column(text, message):
    with pytest.raises(ConfigError, match="x.cfg line 1 column") as err:
        parse_xlcfg(text, "x.cfg")
    assert message in str(err.value)


def test_overrides_take_bare_words_as_strings():
    assert parse_override("memory=64") == ("memory", 64)
    assert parse_override("name=web") == ("name", "web")
    assert parse_override('name="a b"') == ("name", "a b")
    assert parse_override('disk=["x,raw,xvda"]') == ("disk", ["x,raw,xvda"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("memory")


def render(value) -> str:
    """An xl.cfg rendering of a Python value (the test's own serializer)."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return "[" + ", ".join(render(v) for v in value) + "]"


values = st.recursive(
    st.one_of(st.integers(0, 2**40), st.text(alphabet=string.printable.replace("\r", "").replace("\x0b", "")
                                                  .replace("\x0c", ""), max_size=20)),
    lambda children: st.lists(children, max_size=4),
    max_leaves=10,
)
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=8), st.sampled_from(["\n", ";", " ;\n"]))
def test_rendered_settings_parse_back_to_themselves(config, separator):
    text = separator.join(f"{k} = {render(v)}" for k, v in config.items())
    assert parse_xlcfg(text).settings == config


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_fails_only_with_config_error(text):
    try:
        parse_xlcfg(text)
    except ConfigError:
        pass


# -- domain configs ----------------------------------------------------------------------


def test_defaults_are_libxls():
    config = domain_config_from_settings({"name": "a"})
    assert (config.memory, config.vcpus, config.weight, config.cap) == (32, 1, 256, 0)
    assert (config.on_poweroff, config.on_reboot, config.on_crash) == ("destroy", "restart", "destroy")
    assert config.max_grant_frames == 64 and config.workload == "idle"


@pytest.mark.parametrize(
    "settings, key, expected",
    [
        ({"memory": "lots"}, "memory = 'lots'", "whole number of MiB"),
        ({"memory": 0}, "memory = 0", "from 1"),
        ({"vcpus": 0}, "vcpus = 0", "vCPUs"),
        ({"on_crash": "explode"}, "on_crash = 'explode'", "destroy, restart"),
        ({"name": "bad name!"}, "name = 'bad name!'", "letters, digits"),
        ({"maxmem": 8, "memory": 16}, "maxmem = 8", "at least memory"),
        ({"cap": 150}, "cap = 150", "at most 100"),
        ({"weight": 0}, "weight = 0", "weight"),
        ({"cpus": "0-x"}, "cpus = '0-x'", "CPU numbers"),
        ({"uuid": "nope"}, "uuid = 'nope'", "UUID"),
        ({"workload_args": 5}, "workload_args = 5", "list of strings"),
        ({"disk": ["vdev=xvda"]}, "disk entry 0", "no target"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_was_expected(settings, key, expected):
    with pytest.raises(ConfigError) as err:
        domain_config_from_settings({"name": "a", **settings}, "a.cfg")
    assert key in str(err.value) and expected in str(err.value)


def test_unknown_and_ignored_keys_warn():
    config = domain_config_from_settings({"name": "a", "kernel": "/boot/vmlinuz", "colour": "red"}, "a.cfg", {"colour": 3})
    assert any("kernel" in w and "ignored" in w for w in config.warnings)
    assert any("unknown key 'colour' in a.cfg line 3" in w for w in config.warnings)


def test_name_is_required_and_domain_0_reserved():
    with pytest.raises(ConfigError, match="no name"):
        domain_config_from_settings({"memory": 4})
    with pytest.raises(ConfigError, match="dom0"):
        domain_config_from_settings({"name": "Domain-0"})


def test_cpus_syntax():
    assert parse_cpus("0-3,^1") == [0, 2, 3]
    assert parse_cpus(["1", "3"]) == [1, 3]
    assert parse_cpus("all") is None


def test_load_file_with_overrides_and_relative_workload(tmp_path: Path):
    (tmp_path / "w.py").write_text("def run(ctx): pass\n")
    cfg = tmp_path / "web.cfg"
    cfg.write_text('name = "web"\nmemory = 16\nworkload = "w.py:run"\ncpu_weight = 512\n')
    config = load_domain_config(cfg, ["memory=48", "name=web2"])
    assert (config.name, config.memory, config.weight) == ("web2", 48, 512)
    assert config.workload == f"{tmp_path / 'w.py'}:run"
    assert config.to_dict()["memory"] == 48
    with pytest.raises(ConfigError, match="cannot read"):
        load_domain_config(tmp_path / "missing.cfg")


def test_config_round_trips_through_a_dict():
    config = domain_config_from_settings({"name": "a", "disk": ["/x.img,,xvda"], "vif": ["mac=00:16:3e:00:00:01"]})
    again = type(config).from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


# -- disk and vif specs --------------------------------------------------------------------


def test_the_four_equivalent_disk_specs_of_the_man_page():
    specs = [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "raw:/dev/vg/guest-volume,hda,w",
    ]
    parsed = [parse_disk_spec(s) for s in specs]
    assert all(p == parsed[0] for p in parsed)
    assert parsed[0].target == "/dev/vg/guest-volume" and parsed[0].access == "rw" and parsed[0].vdev == "hda"


def test_target_swallows_the_rest_and_size_extension():
    spec = parse_disk_spec("vdev=xvdb, access=ro, size=64M, target=/images/a,b.img")
    assert spec.target == "/images/a,b.img" and spec.readonly and spec.size == 64 << 20
    assert parse_disk_spec("cdrom, vdev=xvdc, target=/x.iso").access == "ro"


def test_vbd_device_numbers():
    assert vdev_to_devid("xvda") == 51712  # 202 << 8
    assert vdev_to_devid("xvdb") == 51728
    assert vdev_to_devid("hda") == 768 and vdev_to_devid("hdc") == 5632
    assert vdev_to_devid("xvdq") == (1 << 28) | (16 << 8)


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("", "empty"),
        ("vdev=xvda", "no target"),
        ("/x.img", "no vdev"),
        ("/x.img,qcow2,xvda", "raw images only"),
        ("/x.img,tar,xvda", "unknown"),
        ("/x.img,raw,xvda,maybe", "access 'maybe'"),
        ("/x.img,raw,floppy0", "not a virtual device name"),
        ("colour=red, target=/x", "unknown key 'colour'"),
        ("vdev=xvda, size=lots, target=/x", "not a size"),
    ],
)
def test_bad_disk_specs_name_the_spec_and_the_problem(spec, problem):
    with pytest.raises(ConfigError) as err:
        parse_disk_spec(spec)
    assert problem in str(err.value)


paths = st.from_regex(r"/[a-z0-9_/.-]{1,20}", fullmatch=True)
vdevs = st.sampled_from(["xvda", "xvdb", "xvdz", "hda", "sdb"])
accesses = st.sampled_from(["r", "ro", "w", "rw"])


@settings(max_examples=200, deadline=None)
@given(paths, vdevs, accesses)
def test_positional_and_keyword_disk_specs_agree(target, vdev, access):
    positional = parse_disk_spec(f"{target},raw,{vdev},{access}")
    keyword = parse_disk_spec(f"format=raw, vdev={vdev}, access={access}, target={target}")
    assert positional == keyword


def test_vif_specs():
    vif = parse_vif_spec("mac=00:16:3E:01:02:03, bridge=br1, mtu=9000", 0)
    assert (vif.mac, vif.bridge, vif.mtu, vif.devid) == ("00:16:3e:01:02:03", "br1", 9000, 0)
    assert parse_vif_spec("", 2).mac.startswith("00:16:3e:")
    with pytest.raises(ConfigError, match="unicast"):
        parse_vif_spec("mac=01:00:00:00:00:00", 0)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_vif_spec("speed=fast", 0)


# -- cluster files ---------------------------------------------------------------------------


def test_default_cluster():
    cluster = default_cluster()
    assert [d.name for d in cluster.domains] == ["hello", "ticker", "echo", "journal"]


def test_cluster_file_with_host_count_and_config_file(tmp_path: Path):
    (tmp_path / "db.cfg").write_text('name = "db"\nmemory = 24\nworkload = "idle"\n')
    text = """
[host]
memory = 512
pcpus = 1

[[domain]]
name = "web"
workload = "ticker"
workload_args = ["--interval", "2"]

[[domain]]
config = "db.cfg"
count = 2
memory = 20
"""
    cluster = parse_cluster(text, "c.toml", tmp_path)
    assert cluster.host == {"memory": 512, "pcpus": 1}
    assert [d.name for d in cluster.domains] == ["web", "db-1", "db-2"]
    assert cluster.domains[1].memory == 20 and cluster.domains[0].workload_args == ["--interval", "2"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ('[[domain]]\nname = "a"\n[[domain]]\nname = "a"\n', "used twice"),
        ('[[domain]]\nname = "a"\nmemory = "big"\n', "memory = 'big'"),
        ('[servers]\nx = 1\n', "unknown table"),
        ('[host]\nmemory = -1\n', "positive whole number"),
        ('[[domain]]\nname = "a"\ncount = 0\n', "count = 0"),
        ('[[domain]\n', "c.toml"),
    ],
)
def test_bad_cluster_files(text, problem, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_cluster(text, "c.toml", tmp_path)
    assert problem in str(err.value)
