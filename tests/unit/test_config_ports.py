"""A domain's ``ports`` (forwards from 127.0.0.1 to a guest's port), as docker compose's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlike.tools.config import ConfigError
from xenlike.tools.config.domain import DomainConfig, domain_config_from_xlcfg
from xenlike.tools.config.ports import PortForward, parse_port_forward

ports = st.integers(1, 65535)


@given(ports, ports, st.sampled_from(["", "127.0.0.1:"]), st.sampled_from(["", "/tcp"]))
def test_every_accepted_spelling_gives_the_same_forward(host, guest, address, protocol):
    assert parse_port_forward(f"{address}{host}:{guest}{protocol}") == PortForward(host, guest)


@given(st.text(max_size=30))
def test_any_text_is_a_forward_or_a_config_error_naming_it(text):
    try:
        forward = parse_port_forward(text)
    except ConfigError as exc:
        assert "port forward" in str(exc)
    else:
        assert 1 <= forward.host_port <= 65535 and 1 <= forward.guest_port <= 65535


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("0.0.0.0:8080:80", "dom0 listens on 127.0.0.1 only"),
        ("8080:80/udp", "only tcp"),
        ("8080:0", "the guest port 0 is outside 1..65535"),
        ("70000:80", "the host port 70000"),
        ("8080", "the host port is not chosen for you"),
        (["8080:80"], "is not a string"),
    ],
)
def test_a_bad_forward_is_refused_with_what_is_wrong(spec, says):
    with pytest.raises(ConfigError) as caught:
        parse_port_forward(spec)
    assert says in str(caught.value)


def test_forwards_need_a_vif_and_distinct_host_ports():
    with pytest.raises(ConfigError, match="a vif to forward to"):
        domain_config_from_xlcfg({"name": "w", "ports": ["8080:80"]})
    with pytest.raises(ConfigError, match="one forward per host port: 8080"):
        domain_config_from_xlcfg({"name": "w", "vif": [""], "ports": ["8080:80", "8080:81"]})
    with pytest.raises(ConfigError, match="is not a string"):
        domain_config_from_xlcfg({"name": "w", "vif": [""], "ports": [9090]})


def test_ports_travel_with_the_config():
    config = domain_config_from_xlcfg({"name": "w", "vif": [""], "ports": ["8080:80"]})
    assert DomainConfig.from_dict(config.to_dict()).ports == [PortForward(8080, 80)]
