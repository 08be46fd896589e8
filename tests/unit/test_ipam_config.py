"""IPAMConfig.from_json: defaults as host-local, and every refusal with code and field."""

import pytest

from ipam.addr import ip_address as A
from ipam.addr import ip_network as N
from ipam.config import DEFAULT_DATA_DIR, IPAMConfig, Range, Route, range_set_str
from ipam.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, IPAMError


def parse(ipam, name="podwire"):
    return IPAMConfig.from_json({"type": "host-local", **ipam}, name)


def refuse(ipam, name="podwire", code=INVALID_CONFIG):
    with pytest.raises(IPAMError) as info:
        IPAMConfig.from_json(ipam, name)
    assert info.value.code == code, info.value
    return info.value.msg


def test_defaults_ipv4():
    c = parse({"ranges": [[{"subnet": "10.244.1.0/24"}]]})
    assert c.ranges == (
        (Range(subnet=N("10.244.1.0/24"), range_start=A("10.244.1.1"), range_end=A("10.244.1.254"),
               gateway=A("10.244.1.1")),),
    )
    assert c.type == "host-local"
    assert c.routes == ()
    assert c.data_dir == DEFAULT_DATA_DIR == "/var/lib/cni/networks"
    assert c.network_name == "podwire"


def test_defaults_ipv6_end_is_last_address():
    (r,), = parse({"ranges": [[{"subnet": "fd00:10:244:1::/64"}]]}).ranges
    assert r.range_start == A("fd00:10:244:1::1")
    assert r.gateway == A("fd00:10:244:1::1")
    assert r.range_end == A("fd00:10:244:1:ffff:ffff:ffff:ffff")


def test_explicit_values_and_routes():
    c = parse(
        {
            "ranges": [
                [{"subnet": "10.0.0.0/16", "rangeStart": "10.0.1.10", "rangeEnd": "10.0.1.20",
                  "gateway": "10.0.0.254"}],
                [{"subnet": "fd00::/120"}],
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.0.0.254"}, {"dst": "::/0"}],
            "dataDir": "/run/podwire/ipam",
        }
    )
    r0 = c.ranges[0][0]
    assert (r0.range_start, r0.range_end, r0.gateway) == (A("10.0.1.10"), A("10.0.1.20"), A("10.0.0.254"))
    assert c.ranges[1][0].subnet == N("fd00::/120")
    assert c.routes == (
        Route(N("0.0.0.0/0"), None),
        Route(N("10.96.0.0/12"), A("10.0.0.254")),
        Route(N("::/0"), None),
    )
    assert c.data_dir == "/run/podwire/ipam"


def test_legacy_single_range_form_comes_first():
    c = parse(
        {
            "subnet": "10.1.0.0/24",
            "rangeStart": "10.1.0.100",
            "rangeEnd": "10.1.0.200",
            "gateway": "10.1.0.254",
            "ranges": [[{"subnet": "fd00::/64"}]],
        }
    )
    assert len(c.ranges) == 2
    legacy = c.ranges[0][0]
    assert (legacy.subnet, legacy.range_start, legacy.range_end, legacy.gateway) == (
        N("10.1.0.0/24"),
        A("10.1.0.100"),
        A("10.1.0.200"),
        A("10.1.0.254"),
    )
    assert c.ranges[1][0].subnet == N("fd00::/64")


def test_several_ranges_in_one_set():
    c = parse({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24", "gateway": "10.0.1.254"}]]})
    assert len(c.ranges) == 1 and len(c.ranges[0]) == 2
    assert range_set_str(c.ranges[0]) == "10.0.0.1-10.0.0.254,10.0.1.1-10.0.1.254"


def test_same_subnet_split_in_disjoint_ranges_is_fine():
    c = parse(
        {
            "ranges": [
                [
                    {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
                    {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"},
                ]
            ]
        }
    )
    assert [str(r) for r in c.ranges[0]] == ["10.0.0.10-10.0.0.19", "10.0.0.20-10.0.0.29"]


def test_config_is_frozen():
    c = parse({"ranges": [[{"subnet": "10.0.0.0/24"}]]})
    with pytest.raises(AttributeError):
        c.data_dir = "/tmp"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.ranges[0][0].gateway = A("10.0.0.2")  # type: ignore[misc]


def test_unknown_keys_pass():
    c = parse({"ranges": [[{"subnet": "10.0.0.0/24", "x-note": 1}]], "somethingElse": True})
    assert c.ranges[0][0].subnet == N("10.0.0.0/24")


def test_range_size_skips_network_broadcast_gateway():
    (r,), = parse({"ranges": [[{"subnet": "10.0.0.0/29"}]]}).ranges
    assert r.size() == 5  # .1 is the gateway: .2 .. .6
    (r,), = parse({"ranges": [[{"subnet": "fd00::/125"}]]}).ranges
    assert r.size() == 6  # ::1 gateway: ::2 .. ::7 (no broadcast in IPv6)
    (r,), = parse({"ranges": [[{"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.7"}]]}).ranges
    assert r.size() == 5


# --- every refusal names its field -----------------------------------------------------

BAD = [
    # (ipam config, words the message must contain)
    ({"ranges": [[{"subnet": "10.0.0.0/24"}]]}, "ipam.type"),  # type missing
    ({"type": "static", "ranges": [[{"subnet": "10.0.0.0/24"}]]}, "'static'"),
    ({"type": "host-local"}, "no IP ranges"),
    ({"type": "host-local", "ranges": []}, "no IP ranges"),
    ({"type": "host-local", "ranges": [[]]}, "ipam.ranges[0]"),  # empty range set
    ({"type": "host-local", "ranges": {"subnet": "10.0.0.0/24"}}, "ipam.ranges"),
    ({"type": "host-local", "ranges": [{"subnet": "10.0.0.0/24"}]}, "ipam.ranges[0]"),  # set must be a list
    ({"type": "host-local", "ranges": [["10.0.0.0/24"]]}, "ipam.ranges[0][0]"),
    ({"type": "host-local", "ranges": [[{}]]}, "ipam.ranges[0][0].subnet: missing"),
    ({"type": "host-local", "ranges": [[{"subnet": 10}]]}, "ipam.ranges[0][0].subnet: must be a string"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/33"}]]}, "ipam.ranges[0][0].subnet"),
    ({"type": "host-local", "ranges": [[{"subnet": "banana/24"}]]}, "ipam.ranges[0][0].subnet"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0"}]]}, "CIDR"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.1/24"}]]}, "host bits"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/31"}]]}, "too small"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/32"}]]}, "too small"),
    ({"type": "host-local", "ranges": [[{"subnet": "fd00::/127"}]]}, "too small"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]},
     "ipam.ranges[0][0].gateway: 10.0.1.1 is outside subnet 10.0.0.0/24"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "fd00::1"}]]},
     "ipam.ranges[0][0].gateway"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.255"}]]}, "broadcast"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.0"}]]},
     "ipam.ranges[0][0].gateway"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "not-an-ip"}]]},
     "ipam.ranges[0][0].gateway"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]},
     "ipam.ranges[0][0].rangeStart: 10.0.1.5 is outside"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.1.0.5"}]]},
     "ipam.ranges[0][0].rangeEnd: 10.1.0.5 is outside"),
    ({"type": "host-local",
      "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]]},
     "comes after rangeEnd"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"}]]},
     "no allocatable address"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]},
     "mixed address families"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}, "overlap"),
    ({"type": "host-local",
      "ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"},
                  {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}]]},
     "overlap"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/16"}]]},
     "range set 0 (10.0.0.1-10.0.0.254) overlaps range set 1"),
    ({"type": "host-local", "subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.0/24"}]]}, "overlaps"),
    ({"type": "host-local", "rangeStart": "10.0.0.5", "ranges": [[{"subnet": "10.0.0.0/24"}]]},
     "ipam.rangeStart: given without ipam.subnet"),
    ({"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.9.0.1"}, "ipam.gateway"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "relative/dir"}, "ipam.dataDir"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": 5}, "ipam.dataDir"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": {"dst": "0.0.0.0/0"}}, "ipam.routes"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"gw": "10.0.0.1"}]},
     "ipam.routes[0].dst: missing"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]],
      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.1/8"}]},
     "ipam.routes[1].dst"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "::/0", "gw": "10.0.0.1"}]},
     "ipam.routes[0].gw"),
    ({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": ["0.0.0.0/0"]}, "ipam.routes[0]"),
]


@pytest.mark.parametrize("ipam,words", BAD, ids=[w for _, w in BAD])
def test_invalid_config_code_7_names_the_field(ipam, words):
    msg = refuse(ipam)
    assert words in msg


def test_ipam_must_be_an_object():
    assert "ipam" in refuse(["host-local"])


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y", None])
def test_network_name_must_be_one_path_component(name):
    assert "name" in refuse({"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}, name=name)


def test_resolvconf_is_unsupported_code_2():
    msg = refuse(
        {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "resolvConf": "/etc/resolv.conf"},
        code=UNSUPPORTED_FIELD,
    )
    assert "resolvConf" in msg and "/etc/resolv.conf" in msg


@pytest.mark.parametrize("value", ["", None])
def test_empty_resolvconf_is_accepted(value):
    assert parse({"ranges": [[{"subnet": "10.0.0.0/24"}]], "resolvConf": value}).ranges


@pytest.mark.parametrize("ipam", [
    {"type": "host-local", "ranges": [[{"subnet": "fd00::%x/64"}]]},
    {"type": "host-local", "ranges": [[{"subnet": "fd00::/64", "gateway": "fd00::1%x y"}]]},
    {"type": "host-local", "ranges": [[{"subnet": "fd00::/64", "rangeStart": "fd00::5%eth0"}]]},
    {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "fd00::%eth0/64"}]},
    {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]],
     "routes": [{"dst": "0.0.0.0/0", "gw": "fe80::1%\n"}]},
])
def test_scope_ids_are_refused(ipam):
    """ipaddress keeps a scope id as free text (newlines too) and prints it back: never accepted."""
    with pytest.raises(IPAMError) as e:
        IPAMConfig.from_json(ipam, "n")
    assert e.value.code == 7 and "scope id" in e.value.msg
