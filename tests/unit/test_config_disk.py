"""Disk specs (xl-disk-configuration(5), libxlu_disk_l.l) and vbd device numbers (xen-vbd-interface(7))."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.tools.config import ConfigError, DiskSpec, parse_disk_spec, vdev_to_devid

# -- the man page's examples ---------------------------------------------------------------------


def test_the_four_equivalent_specs_of_the_man_page():
    specs = [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
        "raw:/dev/vg/guest-volume,hda,w",
    ]
    parsed = [parse_disk_spec(spec) for spec in specs]
    assert parsed == [parsed[0]] * 4
    assert parsed[0] == DiskSpec(target="/dev/vg/guest-volume", vdev="hda", devid=768, format="raw", access="rw",
                                 devtype="disk", backend="0", discard=True, direct_io_safe=False, trusted=True,
                                 size=None)


def test_the_five_equivalent_cdrom_specs_of_the_man_page():
    specs = [
        "/root/image.iso,,hdc,cdrom",
        "/root/image.iso,,hdc,,cdrom",
        "/root/image.iso,raw,hdc,devtype=cdrom",
        "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
        "raw:/root/image.iso,hdc:cdrom,ro",
    ]
    parsed = [parse_disk_spec(spec) for spec in specs]
    assert parsed == [parsed[0]] * 5
    assert (parsed[0].devtype, parsed[0].access, parsed[0].readonly, parsed[0].devid) == ("cdrom", "ro", True, 5632)


def test_target_swallows_the_rest_of_the_spec():
    spec = parse_disk_spec("vdev=xvdb, access=ro, target=/images/a,b=c, d.img ")
    assert spec.target == "/images/a,b=c, d.img " and spec.readonly
    assert parse_disk_spec(",,xvda,target=/x.img,").target == "/x.img"  # an empty positional target, then target=


def test_positional_parameters_fill_the_slots_still_unset():
    assert parse_disk_spec("format=raw,/x.img,xvda").vdev == "xvda"  # format already given: the 2nd word is vdev
    assert parse_disk_spec("access=ro,/x.img,,xvda").readonly
    assert parse_disk_spec("  /x.img ,\traw , xvda , w ").target == "/x.img"


def test_flags_and_keys():
    spec = parse_disk_spec("/x.img,,xvda,no-discard,untrusted,direct-io-safe,backend=Domain-0,backendtype=qdisk,"
                           "specification=xen,grant_usage=0,no-colo")
    assert (spec.discard, spec.trusted, spec.direct_io_safe, spec.backend) == (False, False, True, "0")
    assert parse_disk_spec("discard,trusted,/x.img,,xvda").discard
    assert parse_disk_spec("cdrom,/x.iso,,hdc,rw").access == "ro"  # a CD-ROM is read-only whatever access says
    assert parse_disk_spec("devtype=cdrom,devtype=disk,/x.img,,xvda").devtype == "disk"


def test_deprecated_prefixes():
    assert parse_disk_spec("phy:/dev/sdb,xvda,w").target == "/dev/sdb"
    assert parse_disk_spec("tap:aio:/x.img,xvda,r").readonly
    assert parse_disk_spec("file:/x.img,xvda:disk,w").devtype == "disk"
    assert parse_disk_spec("raw:/x.img,xvda,w") == parse_disk_spec("/x.img,raw,xvda,w")


def test_size_is_the_xenlike_extension():
    assert parse_disk_spec("vdev=xvda, size=64M, target=/x.img").size == 64 << 20
    assert parse_disk_spec("vdev=xvda, size=2g, target=/x.img").size == 2 << 30
    assert parse_disk_spec("vdev=xvda, size=4k, target=/x.img").size == 4096
    assert parse_disk_spec("vdev=xvda, size=1024, target=/x.img").size == 1024
    assert parse_disk_spec("/x.img,,xvda").size is None


def test_to_dict_round_trips():
    spec = parse_disk_spec("vdev=xvdc, size=1M, no-discard, target=/x.img")
    assert DiskSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="unknown fields"):
        DiskSpec.from_dict({**spec.to_dict(), "colour": "red"})


# -- vbd numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vdev, devid",
    [
        ("xvda", 202 << 8),
        ("xvdb", 51728),
        ("xvdp", (202 << 8) | (15 << 4)),
        ("xvdq", (1 << 28) | (16 << 8)),
        ("xvdz", (1 << 28) | (25 << 8)),
        ("xvdaa", (1 << 28) | (26 << 8)),
        ("xvdb2", (202 << 8) | (1 << 4) | 2),  # the spec's "d1p2 xvdb2"
        ("d1p2", (202 << 8) | (1 << 4) | 2),
        ("xvdtq37", (1 << 28) | (536 << 8) | 37),  # the spec's "d536p37 xvdtq37"
        ("d536p37", (1 << 28) | (536 << 8) | 37),
        ("xvda16", (1 << 28) | 16),
        ("d0", 202 << 8),
        ("sda", 8 << 8),
        ("sdb3", (8 << 8) | (1 << 4) | 3),  # "SCSI disk 1 partition 3"
        ("sdp15", (8 << 8) | (15 << 4) | 15),
        ("hda", 3 << 8),
        ("hdb", (3 << 8) | (1 << 6)),
        ("hdc2", (22 << 8) | 2),  # "IDE disk 2 partition 2"
        ("hdd63", (22 << 8) | (1 << 6) | 63),
        # a number is the device number itself (libxl__device_disk_dev_number's strtoul)
        ("51712", 202 << 8),
        ("0xca00", 202 << 8),
        ("0XCA10", (202 << 8) | (1 << 4)),
        ("0145000", 202 << 8),
        ("0", 0),
        ("2147483647", (1 << 31) - 1),
    ],
)
def test_vbd_device_numbers(vdev, devid):
    assert vdev_to_devid(vdev) == devid


def test_a_numeric_vdev_is_the_device_number_in_either_form():
    keyword = parse_disk_spec("vdev=51712, target=/x.img")
    positional = parse_disk_spec("/x.img,,0xca00")
    assert (keyword.vdev, keyword.devid) == ("51712", 51712)
    assert (positional.vdev, positional.devid) == ("0xca00", 51712)
    assert positional.devid == parse_disk_spec("/x.img,,xvda").devid


@pytest.mark.parametrize("vdev", ["xvd", "xvda0", "xvda256", "xvdA", "sdq", "sda16", "hde", "hda64", "floppy",
                                  "d1048576", "xvda 1", "", "2147483648", "0x", "08", "-1", "12a"])
def test_bad_vdevs(vdev):
    with pytest.raises(ConfigError, match="vdev"):
        vdev_to_devid(vdev)


# -- bad specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("vdev=xvda", "no target: add target="),
        ("/x.img", "no vdev: add vdev=xvda"),
        ("/x.img,,", "no vdev"),
        ("/x.img,qcow2,xvda", "format 'qcow2': xenlike serves raw images only"),
        ("qcow2:/x.img,xvda,w", "format 'qcow2': xenlike serves raw images only"),
        ("/x.img,tar,xvda", "format 'tar' is unknown"),
        ("/x.img,raw,xvda,maybe", "access 'maybe' is unknown: expected ro, r, rw or w"),
        ("/x.img,raw,floppy0", 'vdev "floppy0" is not a virtual device name'),
        ("/x.img,raw,xvda,rw,more", "too many positional parameters at 'more'"),
        ("colour=red, target=/x", "unknown key 'colour'"),
        ("devtype=tape, /x.img,,xvda", "devtype=tape is unknown"),
        ("vdev=xvda, size=lots, target=/x", "size=lots is not a size"),
        ("vdev=xvda, size=1000, target=/x", "not a positive multiple of 512"),
        ("vdev=xvda, size=0, target=/x", "not a positive multiple of 512"),
        ("vdev=xvda, vdev=xvdb, target=/x", "vdev respecified"),
        ("/x.img,raw,xvda,target=/y.img", "target respecified"),
        (",hdc:cdrom,r", "empty CD-ROM drive"),
        ("cdrom, vdev=hdc", "empty CD-ROM drive"),
        ("/x.img,empty,xvda", "empty drive"),
        ("iscsi:iqn.2001-05.com.example,xvda,w", "runs no block scripts"),
        ("script=block-nbd, /x,,xvda", "runs no block scripts"),
        ("foo:/x.img,xvda,w", "unknown deprecated disk prefix foo:"),
        ("/a=b,,xvda", "a positional parameter cannot contain '='"),
        ("backend=driverdom, /x.img,,xvda", "back-ends in dom0"),
        ("specification=virtio, /x.img,,xvda", "not virtio"),
        ("backendtype=standalone, /x.img,,xvda", "standalone"),
        ("backendtype=floppy, /x.img,,xvda", "backendtype=floppy is unknown"),
        ("colo, /x.img,,xvda", "COLO"),
        ("colo-host=10.0.0.1, /x.img,,xvda", "COLO"),
        ("/x.img,,hdc:tape", "unknown device type 'tape'"),
    ],
)
def test_bad_specs_name_the_spec_and_the_problem(spec, problem):
    with pytest.raises(ConfigError) as err:
        parse_disk_spec(spec)
    message = str(err.value)
    assert message.startswith(f'disk spec "{spec}": ')
    assert problem in message


def test_a_spec_that_is_not_a_string():
    with pytest.raises(ConfigError, match="disk spec 5 is not a string"):
        parse_disk_spec(5)  # type: ignore[arg-type]


# -- property: the forms agree -----------------------------------------------------------------------

targets = st.from_regex(r"(/|\./|images/)[a-z0-9_][a-z0-9_./-]{0,12}\.img", fullmatch=True)
vdevs = st.one_of(
    st.from_regex(r"xvd[a-z]{1,2}([1-9][0-9]?)?", fullmatch=True),
    st.from_regex(r"sd[a-p]([1-9]|1[0-5])?", fullmatch=True),
    st.from_regex(r"hd[a-d]([1-9]|[1-5][0-9]|6[0-3])?", fullmatch=True),
)
accesses = st.sampled_from(["r", "ro", "w", "rw"])
flags = st.lists(st.sampled_from(["discard", "no-discard", "trusted", "untrusted", "direct-io-safe", "cdrom",
                                  "backend=0", "size=1M", "size=4096"]), unique=True, max_size=4)
spaces = st.sampled_from(["", " ", "  ", "\t"])


def _consistent(extras: list[str]) -> bool:
    words = {extra.split("=")[0] for extra in extras}
    return not ({"discard", "no-discard"} <= words or {"trusted", "untrusted"} <= words
                or sum(extra.startswith("size=") for extra in extras) > 1)


def _joined(parts: list[str], draw) -> str:
    """``parts`` separated by commas, each followed by whitespace that the parser must skip."""
    return "".join((("," + draw(spaces)) if index else "") + part for index, part in enumerate(parts))


@settings(max_examples=200, deadline=None)
@given(targets, vdevs, st.one_of(st.none(), accesses), flags.filter(_consistent), st.data())
def test_keyword_and_positional_specs_agree(target, vdev, access, extras, data):
    keyword_params = ["format=raw", f"vdev={vdev}"] + ([f"access={access}"] if access else []) + extras
    keyword = _joined(data.draw(st.permutations(keyword_params)) + [f"target={target}"], data.draw)

    positional_words = [target, data.draw(st.sampled_from(["", "raw"])), vdev] + ([access] if access else [])
    if access is None and data.draw(st.booleans()):
        positional_words.append("")  # an empty access takes the default
    split = data.draw(st.integers(0, len(extras)))
    positional = _joined(extras[:split] + positional_words + extras[split:], data.draw)

    parsed = parse_disk_spec(keyword)
    assert parse_disk_spec(positional) == parsed
    assert (parsed.target, parsed.vdev, parsed.devid) == (target, vdev, vdev_to_devid(vdev))
    assert parsed.readonly == (access in ("r", "ro") or "cdrom" in extras)
    if access is not None:
        deprecated = _joined(extras[:split] + [f"raw:{target}", vdev, access] + extras[split:], data.draw)
        assert parse_disk_spec(deprecated) == parsed
