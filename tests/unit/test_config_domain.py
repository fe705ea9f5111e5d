"""Domain configs (xl.cfg(5) keys, libxl defaults) and vif specs (xl-network-configuration(5))."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from xenlike.tools.config import (
    ConfigError,
    DomainConfig,
    VifSpec,
    domain_config_from_xlcfg,
    format_value,
    load_domain_config,
    parse_cpus,
    parse_vif_spec,
    parse_xlcfg,
)

# -- defaults and every key -------------------------------------------------------------------------


def test_defaults_are_libxls():
    config = domain_config_from_xlcfg({"name": "a"}, "a.cfg")
    assert (config.memory, config.maxmem, config.vcpus, config.maxvcpus) == (32, 32, 1, 1)
    assert (config.cpus, config.weight, config.cap, config.max_grant_frames) == (None, 256, 0, 64)
    assert (config.on_poweroff, config.on_reboot, config.on_crash, config.on_watchdog) == (
        "destroy", "restart", "destroy", "destroy")
    assert config.on_soft_reset == "soft-reset"
    assert (config.workload, config.workload_args, config.disk, config.vif) == ("idle", [], [], [])
    assert (config.uuid, config.extra, config.cmdline, config.warnings) == (None, "", "", [])


def test_every_key_xenlike_uses(tmp_path: Path):
    text = f"""
name = "web"
uuid = "3F2B9C1E-5D4A-4E7B-9C0D-1A2B3C4D5E6F"
memory = 64
maxmem = 128
vcpus = 2
maxvcpus = 4
cpus = "0-3,^1"
cpu_weight = 512
cap = 150
on_poweroff = "preserve"
on_reboot = "rename-restart"
on_crash = "coredump-restart"
on_watchdog = "coredump-destroy"
on_soft_reset = "destroy"
disk = [ "format=raw, vdev=xvda, access=rw, size=16M, target=web.img", "{tmp_path}/ro.img,,xvdb,r" ]
vif = [ "mac=00:16:3E:74:3d:76,bridge=xenbr1", "" ]
ports = [ "8080:80" ]
extra = "console=hvc0"
max_grant_frames = 32
workload = "ticker"
workload_args = "--interval '2 s'"
"""
    config = domain_config_from_xlcfg(parse_xlcfg(text, "web.cfg"), "web.cfg", base_dir=tmp_path)
    assert (config.name, config.uuid) == ("web", "3f2b9c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6f")
    assert (config.memory, config.maxmem, config.vcpus, config.maxvcpus) == (64, 128, 2, 4)
    assert (config.cpus, config.weight, config.cap) == (frozenset({0, 2, 3}), 512, 150)
    assert (config.on_poweroff, config.on_reboot, config.on_crash, config.on_watchdog, config.on_soft_reset) == (
        "preserve", "rename-restart", "coredump-restart", "coredump-destroy", "destroy")
    assert [(d.target, d.vdev, d.access, d.size) for d in config.disk] == [
        (str(tmp_path / "web.img"), "xvda", "rw", 16 << 20), (str(tmp_path / "ro.img"), "xvdb", "ro", None)]
    assert [(v.devid, v.mac, v.bridge) for v in config.vif][0] == (0, "00:16:3e:74:3d:76", "xenbr1")
    assert config.vif[1].devid == 1 and config.vif[1].bridge == "xenbr0"
    assert (config.extra, config.cmdline, config.max_grant_frames) == ("console=hvc0", "console=hvc0", 32)
    assert (config.workload, config.workload_args) == ("ticker", ["--interval", "2 s"])
    assert config.source == "web.cfg"
    assert [str(forward) for forward in config.ports] == ["127.0.0.1:8080->80/tcp"]
    assert config.warnings == []


def test_numbers_may_be_strings_as_xl_reads_them_with_strtol():
    config = domain_config_from_xlcfg({"name": "a", "memory": "0x40", "vcpus": " 2", "cap": "010"})
    assert (config.memory, config.vcpus, config.cap) == (64, 2, 8)


@pytest.mark.parametrize("key", ["on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset"])
def test_soft_reset_is_an_action_of_every_on_key_as_in_xl_cfg(key):
    assert getattr(domain_config_from_xlcfg({"name": "a", key: "soft-reset"}), key) == "soft-reset"


def test_weight_is_an_alias_of_cpu_weight():
    assert domain_config_from_xlcfg({"name": "a", "weight": 128}).weight == 128
    assert domain_config_from_xlcfg({"name": "a", "weight": 128, "cpu_weight": 128}).weight == 128


@pytest.mark.parametrize(
    "settings, cmdline, warned",
    [
        ({"extra": "quiet"}, "quiet", False),
        ({"root": "/dev/xvda1"}, "root=/dev/xvda1", False),
        ({"root": "/dev/xvda1", "extra": "quiet"}, "root=/dev/xvda1 quiet", False),
        ({"cmdline": "init=/bin/sh", "extra": "quiet"}, "init=/bin/sh", True),
    ],
)
def test_the_command_line_is_built_as_xl_builds_it(settings, cmdline, warned):
    config = domain_config_from_xlcfg({"name": "a", **settings}, "a.cfg")
    assert config.cmdline == cmdline
    assert any("in favour of cmdline" in warning for warning in config.warnings) == warned


@pytest.mark.parametrize(
    "value, cpus",
    [
        ("all", None),
        ("0-3,5,^1", [0, 2, 3, 5]),
        ("^1,0-3", [0, 1, 2, 3]),  # items apply in order, as xl's update_cpumap_range
        ("3", [3]),
        (3, [3]),
        ("nodes:0", None),
        ("node:0,^node:0,2", [2]),
        (["2", "3-8,^5"], [2, 3, 4, 6, 7, 8]),  # per-vCPU in xl; their union here
        ([1, "all"], None),
        ([], None),
    ],
)
def test_cpu_lists(value, cpus):
    assert parse_cpus(value) == cpus
    config = domain_config_from_xlcfg({"name": "a", "cpus": value})
    assert config.cpus == (None if cpus is None else frozenset(cpus))


def test_maxmem_without_memory_is_both():
    """libxl: a config with maxmem and no memory starts at maxmem."""
    config = domain_config_from_xlcfg({"name": "a", "maxmem": 96})
    assert (config.memory, config.maxmem) == (96, 96)


def test_cap_counts_maxvcpus():
    """A cap is in percent of one pCPU, up to 100 for each vCPU the domain may bring online."""
    config = domain_config_from_xlcfg({"name": "a", "vcpus": 1, "maxvcpus": 3, "cap": 300})
    assert (config.vcpus, config.maxvcpus, config.cap) == (1, 3, 300)


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"memory": "lots"}, 'memory = "lots" in a.cfg line 2: expected a whole number of MiB'),
        ({"memory": 0}, "memory = 0 in a.cfg line 2: expected a whole number of MiB, at least 1"),
        ({"memory": [64]}, "memory = [64] in a.cfg line 2: expected a whole number of MiB"),
        ({"memory": 32, "maxmem": 8}, "maxmem = 8 in a.cfg line 3: expected at least memory (32 MiB)"),
        ({"vcpus": 0}, "vcpus = 0 in a.cfg line 2: expected a whole number of vCPUs, at least 1"),
        ({"vcpus": "two"}, 'vcpus = "two" in a.cfg line 2: expected a whole number of vCPUs'),
        ({"maxvcpus": 1, "vcpus": 2}, "maxvcpus = 1 in a.cfg line 2: expected at least vcpus (2)"),
        ({"cpus": "0-x"}, 'cpus = "0-x" in a.cfg line 2: expected pCPU numbers and ranges'),
        ({"cpus": "3-1"}, "runs backwards"),
        ({"cpus": "^0"}, "leaves no pCPU"),
        ({"cpus": "^all"}, '"^" and "all" cannot be combined'),
        ({"cpus": "all,^7"}, "the host's pCPUs are not known yet"),
        ({"cpus": "node:1"}, "one NUMA node"),
        ({"cpu_weight": 0}, "cpu_weight = 0 in a.cfg line 2: expected a weight, from 1 to 65535"),
        ({"weight": 70000}, "weight = 70000 in a.cfg line 2: expected a weight, from 1 to 65535"),
        ({"weight": 1, "cpu_weight": 2}, "weight = 1 in a.cfg line 2: expected the same value as cpu_weight = 2"),
        ({"cap": 150}, "cap = 150 in a.cfg line 2: expected a cap in percent of one pCPU (0 = none, 100 per vCPU), "
                       "at most 100"),
        ({"vcpus": 2, "cap": 300}, "cap = 300 in a.cfg line 3: expected a cap in percent of one pCPU (0 = none, "
                                   "100 per vCPU), at most 200"),
        ({"on_crash": "explode"}, 'on_crash = "explode" in a.cfg line 2: expected one of destroy, restart, '
                                  'rename-restart, preserve, coredump-destroy, coredump-restart, soft-reset'),
        ({"name": "bad name!"}, 'name = "bad name!" in a.cfg line 2: expected a name of letters, digits'),
        ({"name": "42"}, "not all digits"),
        ({"name": "x" * 65}, "at most 64 characters"),
        ({"name": "Domain-0"}, 'name = "Domain-0" in a.cfg line 2: expected another name: Domain-0 is dom0\'s'),
        ({"uuid": "nope"}, 'uuid = "nope" in a.cfg line 2: expected a UUID like'),
        ({"extra": ["a"]}, 'extra = ["a"] in a.cfg line 2: expected a string'),
        ({"workload": "two words"}, 'workload = "two words" in a.cfg line 2: expected a registered workload name'),
        ({"workload": "pkg.mod:"}, "expected a function name after the last ':'"),
        ({"workload": "not a module:run"}, "expected a module name (or a path/to/file.py) before ':'"),
        ({"workload_args": 5}, "workload_args = 5 in a.cfg line 2: expected a list of strings"),
        ({"workload_args": [["x"]]}, 'workload_args = [["x"]] in a.cfg line 2: expected a list of strings'),
        ({"workload_args": "'open"}, "expected words split as a shell would (No closing quotation)"),
        ({"max_grant_frames": 0}, "max_grant_frames = 0 in a.cfg line 2: expected a whole number of grant-table"),
        ({"disk": "/x.img,,xvda"}, 'disk = "/x.img,,xvda" in a.cfg line 2: expected a [list] of disk spec strings'),
        ({"disk": ["vdev=xvda"]}, 'disk entry 0 in a.cfg line 2: disk spec "vdev=xvda": no target'),
        ({"disk": ["/a.img,,xvda", "/b.img,,d0"]}, "expected one disk per device: xvda and d0 are both device 51712"),
        ({"vif": ["", "speed=fast"]}, 'vif entry 1 in a.cfg line 2: vif spec "speed=fast": unknown key \'speed\''),
        ({"vif": ["devid=1", ""]}, "expected one interface per devid: entries 0 and 1 are both devid 1"),
        ({"vif": ["mac=00:16:3e:00:00:01", "mac=00:16:3E:00:00:01"]}, "expected distinct MACs"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_was_expected(settings, message):
    key = next(iter(settings))
    text = 'name = "a"\n' + "".join(f"{k} = {_xl(v)}\n" for k, v in settings.items() if k != "name")
    if key == "name":
        text = f"name = {_xl(settings['name'])}\n\n"
        message = message.replace("line 2", "line 1")
    with pytest.raises(ConfigError) as err:
        domain_config_from_xlcfg(parse_xlcfg(text, "a.cfg"), "a.cfg")
    assert message in str(err.value)


def _xl(value) -> str:
    return format_value(value)


def test_values_from_a_plain_dict_are_named_by_source():
    with pytest.raises(ConfigError, match=r'^memory = "lots" in web\.cfg: expected a whole number of MiB$'):
        domain_config_from_xlcfg({"name": "a", "memory": "lots"}, "web.cfg")


def test_toml_types_that_xl_cannot_hold_are_bad_values():
    for settings, message in [({"memory": True}, "memory = true"), ({"memory": 64.0}, "memory = 64.0"),
                              ({"name": {"a": 1}}, 'name = {a = 1}')]:
        with pytest.raises(ConfigError) as err:
            domain_config_from_xlcfg({"name": "a", **settings}, "c.toml")
        assert message in str(err.value)


def test_name_is_mandatory():
    with pytest.raises(ConfigError, match=r"^a\.cfg has no name: add name = "):
        domain_config_from_xlcfg({"memory": 4}, "a.cfg")


def test_ignored_and_unknown_keys_warn():
    text = 'name = "a"\ntype = "pvh"\nkernel = "/boot/vmlinuz"\nfoo = 1\n'
    config = domain_config_from_xlcfg(parse_xlcfg(text, "/path/x.cfg"), "/path/x.cfg")
    assert config.warnings == [
        "key 'type' in /path/x.cfg line 2 is an xl setting xenlike does not use, ignored",
        "key 'kernel' in /path/x.cfg line 3 is an xl setting xenlike does not use, ignored",
        "unknown key 'foo' in /path/x.cfg line 4, ignored",
    ]


# -- files, overrides, paths ------------------------------------------------------------------------


def test_load_a_file_with_overrides_and_relative_paths(tmp_path: Path):
    (tmp_path / "w.py").write_text("def run(ctx): pass\n")
    cfg = tmp_path / "web.cfg"
    cfg.write_text('name = "web"\nmemory = 16\nworkload = "w.py:run"\ncpu_weight = 512\n'
                   'disk = ["vdev=xvda, target=images/web.img"]\n')
    config = load_domain_config(cfg, ["memory=48", "name=web2", 'vif=["bridge=br1"]; vcpus=2'])
    assert (config.name, config.memory, config.vcpus, config.weight) == ("web2", 48, 2, 512)
    assert config.workload == f"{tmp_path / 'w.py'}:run"
    assert config.disk[0].target == str(tmp_path / "images" / "web.img")
    assert config.vif[0].bridge == "br1"
    assert config.source == str(cfg)


def test_absolute_paths_and_module_workloads_are_kept(tmp_path: Path):
    config = domain_config_from_xlcfg({"name": "a", "workload": "/opt/w.py:run", "disk": ["/x.img,,xvda"]},
                                      base_dir=tmp_path)
    assert (config.workload, config.disk[0].target) == ("/opt/w.py:run", "/x.img")
    assert domain_config_from_xlcfg({"name": "a", "workload": "pkg.mod:main"}).workload == "pkg.mod:main"


def test_relative_paths_default_to_the_current_directory():
    config = domain_config_from_xlcfg({"name": "a", "disk": ["a.img,,xvda"]})
    assert config.disk[0].target == os.path.join(os.getcwd(), "a.img")


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read .*missing.cfg"):
        load_domain_config(tmp_path / "missing.cfg")
    (tmp_path / "latin1.cfg").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="latin1.cfg is not UTF-8 text"):
        load_domain_config(tmp_path / "latin1.cfg")
    (tmp_path / "bad.cfg").write_text('name = "a"\nmemory = lots\n')
    with pytest.raises(ConfigError, match=r"bad\.cfg line 2 column 10: expected a value"):
        load_domain_config(tmp_path / "bad.cfg")
    (tmp_path / "ok.cfg").write_text('name = "a"\n')
    with pytest.raises(ConfigError, match="'memory' on the command line column 7"):
        load_domain_config(tmp_path / "ok.cfg", ["memory"])


def test_config_round_trips_through_a_dict_and_msgpack():
    config = domain_config_from_xlcfg({
        "name": "a", "cpus": "1,3", "disk": ["/x.img,,xvda", "vdev=xvdb, size=1M, target=/y.img"],
        "vif": ["mac=00:16:3e:00:00:01, rate=10Mb/s", ""], "workload_args": ["-v"], "colour": "red"}, "a.cfg")
    wire = msgpack.unpackb(msgpack.packb(config.to_dict()))
    assert wire["cpus"] == [1, 3]
    again = DomainConfig.from_dict(wire)
    assert again == config
    with pytest.raises(ConfigError, match="unknown fields"):
        DomainConfig.from_dict({**wire, "colour": "red"})


# -- vif specs -----------------------------------------------------------------------------------------


def test_vif_defaults_are_libxls():
    vif = parse_vif_spec("", 2)
    assert (vif.devid, vif.bridge, vif.mtu, vif.backend, vif.trusted) == (2, "xenbr0", 1500, "0", True)
    assert (vif.vifname, vif.ip, vif.rate, vif.ifname(7)) == (None, None, None, "vif7.2")


def test_random_macs_follow_libxl():
    macs = {parse_vif_spec("", 0).mac for _ in range(200)}
    assert len(macs) > 190
    for mac in macs:
        octets = [int(part, 16) for part in mac.split(":")]
        assert octets[:3] == [0x00, 0x16, 0x3E]  # Xen's OUI: unicast, globally administered
        assert octets[3] < 0x80  # libxl: r[0] & 0x7f
    assert parse_vif_spec("mac=00:00:00:00:00:00", 0).mac.startswith("00:16:3e:")  # all-zero means "not given"


def test_the_man_page_vif_examples():
    first = parse_vif_spec("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0", 0)
    assert (first.mac, first.bridge) == ("00:16:3e:74:3d:76", "xenbr0")
    assert parse_vif_spec("mac=00:16:3E:74:34:32", 1).mac == "00:16:3e:74:34:32"
    assert parse_vif_spec("mac=00:16:3e:5f:48:e4,bridge=xenbr1", 1).bridge == "xenbr1"


@pytest.mark.parametrize(
    "rate, per_interval, interval_us",
    [
        ("10Mb/s", 10_000_000 // 8 * 50_000 // 1_000_000, 50_000),
        ("250KB/s", 250_000 * 50_000 // 1_000_000, 50_000),
        ("1MB/s@20ms", 20_000, 20_000),  # "20,000 bytes in every 20 millisecond period"
        ("1GB/s@500us", 500_000, 500),
        ("100B/s@2s", 200, 2_000_000),
        ("100B/s@2", 200, 2_000_000),
        ("4295MB/s@4294s", 4_295_000_000 * 4294, 4_294_000_000),  # just below libxlu's 64-bit limit
    ],
)
def test_vif_rates_as_libxlu_reads_them(rate, per_interval, interval_us):
    vif = parse_vif_spec(f"rate={rate}", 0)
    assert (vif.rate, vif.rate_bytes_per_interval, vif.rate_interval_us) == (rate, per_interval, interval_us)


def test_vif_keys():
    vif = parse_vif_spec(" mac=0:16:3e:1:2:3 , ip=10.0.0.2 10.0.0.3, mtu=9000, vifname=web0, devid=5, "
                         "backend=Domain-0, type=vif, model=e1000, script=vif-bridge, gatewaydev=eth0, untrusted", 0)
    assert (vif.mac, vif.ip, vif.mtu, vif.vifname, vif.devid, vif.trusted) == (
        "00:16:3e:01:02:03", "10.0.0.2 10.0.0.3", 9000, "web0", 5, False)
    assert parse_vif_spec("mtu=0", 0).mtu == 1500  # libxl: 0 is the default
    assert VifSpec.from_dict(vif.to_dict()) == vif


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("speed=fast", "unknown key 'speed'"),
        ("bridge", "'bridge' is not key=value"),
        ("mac=01:00:5e:00:00:01", "is a multicast address"),
        ("mac=00:16:3e:00:01", "is not a MAC address"),
        ("mac=00:16:3e:00:01:zz", "is not a MAC address"),
        ("mtu=big", "mtu=big is not a whole number"),
        ("mtu=20", "mtu=20 is outside 68..65535"),
        ("devid=-1", "devid=-1 is not a whole number"),
        ("rate=fast", "rate=fast is not a rate"),
        ("rate=0MB/s", "the rate must be from 1"),
        ("rate=1MB/s@", "is not an interval"),
        ("rate=1MB/s@0ms", "the interval must be from 1 us"),
        ("rate=1MB/s@5000s", "the interval must be from 1 us"),
        # libxlu: bytes/s times the interval in us must fit in 64 bits
        ("rate=4294967295GB/s@5us", "rate=4294967295GB/s@5us overflows: 4294967295000000000 bytes/s times 5 us is "
                                    "more than 2^64-1 = 18446744073709551615"),
        ("rate=4296MB/s@4294s", "rate=4296MB/s@4294s overflows: 4296000000 bytes/s times 4294000000 us is more "
                                "than 2^64-1 = 18446744073709551615"),
        ("ip=10.0.0.300", "is not an IP address"),
        ("bridge=a/b", "is not an interface name"),
        ("vifname=averyveryverylongname", "is not an interface name"),
        ("backend=netdom", "back-ends in dom0"),
        ("type=e1000", "type=e1000 is unknown"),
        ("vlan=10", "has no VLANs"),
    ],
)
def test_bad_vif_specs_name_the_spec_and_the_problem(spec, problem):
    with pytest.raises(ConfigError) as err:
        parse_vif_spec(spec, 0)
    assert str(err.value).startswith(f'vif spec "{spec}": ') and problem in str(err.value)
