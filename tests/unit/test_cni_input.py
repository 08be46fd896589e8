"""Hostile CNI input (issue 10): every value is parsed into a typed value or refused with a code
that names the field, before it reaches nft text, netlink, the IPAM store or a path. No root."""

from __future__ import annotations

import json
import random

import pytest

from cni_plugin.config import parse_netconf
from cni_plugin.errors import CNIError
from cni_plugin.hostport import checked_state, plan_state, render_add, render_delete
from cni_plugin.main import dispatch
from cni_plugin.result import Result

INJECTION = ("::1 . tcp . 1 : accept }\nadd table ip pwned\ndelete table ip victim\n"
             "create element inet podwire-cni hostports6 { ::2")
HOSTILE_TEXT = [INJECTION, "garbage", "localhost", "10.0.0.1 }", " 10.0.0.1", "10.0.0.1\n", "fe80::1%eth0",
                "fe80::1%x }\nadd table ip pwned", "0x7f.1", "010.0.0.1", "1.2.3.4/32", "::1 . tcp . 1", "",
                "\0", "é", "a" * 5000]
HOSTILE_VALUES = [5, 0, -1, 1.5, True, None, [], {}, ["10.0.0.1"], {"ip": "10.0.0.1"}, 2**70]


def conf(**kw):
    base = {"cniVersion": "1.1.0", "name": "n", "type": "podwire",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    base.update(kw)
    return base


def mapping(**kw):
    return conf(runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", **kw}]})


def code_of(raw) -> int:
    with pytest.raises(CNIError) as e:
        parse_netconf(raw)
    return e.value.code


# --- item 1: hostIP never reaches nft text unparsed -------------------------------------------

@pytest.mark.parametrize("host_ip", [v for v in HOSTILE_TEXT if v != ""] + [v for v in HOSTILE_VALUES if v is not None])
def test_hostile_host_ip_is_refused_with_code_7_naming_the_field(host_ip):
    with pytest.raises(CNIError) as e:
        parse_netconf(mapping(hostIP=host_ip))
    assert e.value.code == 7 and "portMappings[0].hostIP" in e.value.msg
    assert "\n" not in e.value.msg  # the value is quoted (repr), never pasted


@pytest.mark.parametrize("host_ip,typed", [("192.0.2.1", "192.0.2.1"), ("2001:DB8::0:1", "2001:db8::1"),
                                           ("0.0.0.0", ""), ("::", ""), ("", ""), (None, "")])
def test_valid_host_ips_become_canonical_addresses(host_ip, typed):
    m = parse_netconf(mapping(hostIP=host_ip)).port_mappings[0]
    assert str(m.host_ip or "") == typed


@pytest.mark.parametrize("field,value", [("protocol", INJECTION), ("protocol", 6), ("protocol", ["tcp"]),
                                         ("hostPort", "80"), ("hostPort", 65536), ("hostPort", INJECTION),
                                         ("containerPort", 0), ("containerPort", 8.0), ("hostPort", True)])
def test_other_port_mapping_fields_are_typed(field, value):
    assert code_of(mapping(**{field: value})) == 7


def test_rendered_hostport_text_holds_only_typed_values():
    c = parse_netconf(conf(ipMasq=True, runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "TCP", "hostIP": "2001:DB8::1"},
        {"HostPort": 53, "ContainerPort": 53, "Protocol": "udp", "HostIP": "192.0.2.1"}]}))
    state = plan_state("cid", "eth0", "pw0123456789ab", c.port_mappings, ["10.1.0.5/24"], True)
    text = render_add(state, c.bridge)
    assert "2001:db8::1 . tcp . 8080 : goto hp-pw0123456789ab" in text
    assert "192.0.2.1 . udp . 53" in text
    json.dumps(state)  # the state file holds plain strings


def test_state_files_with_injected_text_are_not_rendered_back_on_delete():
    """A state file written by a version that pasted hostIP into nft text must not inject on DEL."""
    old = {"containerID": "c", "ifname": "eth0", "chain": "hp-pw0123456789ab",
           "elements": [INJECTION, "tcp . 80", "192.0.2.1 . udp . 53", "localhost . tcp . 1", "tcp . 99999"],
           "masq": ["10.1.0.5", "10.1.0.6 }\nadd table ip pwned"]}
    statements = render_delete(checked_state(old))
    assert statements == ["delete element inet podwire-cni hostports { tcp . 80 }",
                          "delete element inet podwire-cni hostports4 { 192.0.2.1 . udp . 53 }",
                          "delete chain inet podwire-cni hp-pw0123456789ab",
                          "delete element inet podwire-cni masq4 { 10.1.0.5 }"]
    bad_chain = checked_state({**old, "chain": "hp-x }\nadd table ip pwned"})
    assert bad_chain["chain"] == "" and not any("pwned" in s for s in render_delete(bad_chain))
    assert render_delete(checked_state("not a dict")) == []


# --- item 2: GC keeps what is valid and refuses what it cannot match -----------------------------

def _ipam_dir(tmp_path, owner="live-pod\r\neth0"):
    d = tmp_path / "ipam" / "n"
    d.mkdir(parents=True)
    (d / "10.1.0.2").write_text(owner)
    return d


@pytest.mark.parametrize("entry", [{"containerID": "live-pod"}, {"containerID": "live-pod", "ifname": ""},
                                   {"containerID": 5, "ifname": "eth0"}, {"containerID": ["x"], "ifname": "eth0"},
                                   {"containerID": None, "ifname": "eth0"}, {"containerID": "live-pod", "ifname": 0},
                                   "live-pod", None])
def test_gc_refuses_attachments_without_string_container_and_ifname(tmp_path, entry):
    d = _ipam_dir(tmp_path)
    raw = conf(ipam={"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]], "dataDir": str(tmp_path / "ipam")},
               stateDir=str(tmp_path / "state"))
    raw["cni.dev/valid-attachments"] = [{"containerID": "live-pod", "ifname": "eth0"}, entry]
    rc, out = dispatch({"CNI_COMMAND": "GC", "PODWIRE_CNI_LOG": str(tmp_path / "log")}, json.dumps(raw).encode())
    assert rc == 1 and json.loads(out)["code"] == 7 and "valid-attachments[1]" in json.loads(out)["msg"]
    assert (d / "10.1.0.2").exists()  # the live pod keeps its address


def test_gc_keeps_listed_and_frees_unlisted(tmp_path):
    d = _ipam_dir(tmp_path)
    (d / "10.1.0.3").write_text("gone-pod\r\neth0")
    raw = conf(ipam={"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]], "dataDir": str(tmp_path / "ipam")},
               stateDir=str(tmp_path / "state"))
    raw["cni.dev/valid-attachments"] = [{"containerID": "live-pod", "ifname": "eth0"}]
    rc, out = dispatch({"CNI_COMMAND": "GC", "PODWIRE_CNI_LOG": str(tmp_path / "log")}, json.dumps(raw).encode())
    assert (rc, out) == (0, "")
    assert (d / "10.1.0.2").exists() and not (d / "10.1.0.3").exists()


# --- item 5: container IDs and interface names ----------------------------------------------------

def _env(**kw):
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/nonexistent/ns", **kw}


@pytest.mark.parametrize("cid", ["abc\r\n", "abc\ndef", "   ", " abc", "-abc", "_abc", ".abc", "../etc", "a/b",
                                 "a b", "a;b", "é", "abc\0"])
def test_bad_container_ids_are_code_4(tmp_path, cid):
    rc, out = dispatch({**_env(CNI_CONTAINERID=cid), "PODWIRE_CNI_LOG": str(tmp_path / "log")},
                       json.dumps(conf()).encode())
    assert rc == 1 and json.loads(out)["code"] == 4 and "CNI_CONTAINERID" in json.loads(out)["msg"]


@pytest.mark.parametrize("verb", ["ADD", "DEL", "CHECK"])
@pytest.mark.parametrize("ifname", ["eth 0", "eth:0", "eth0\n", "x" * 16, "é" * 8, ".", "..", "a/b", "\t"])
def test_bad_interface_names_are_code_4(tmp_path, verb, ifname):
    rc, out = dispatch({**_env(CNI_COMMAND=verb, CNI_IFNAME=ifname), "PODWIRE_CNI_LOG": str(tmp_path / "log")},
                       json.dumps(conf(prevResult={})).encode())
    assert rc == 1 and json.loads(out)["code"] == 4 and "CNI_IFNAME" in json.loads(out)["msg"]


def test_libcni_style_ids_pass(tmp_path):
    from cni_plugin.verbs import Env

    for cid in ("0123456789abcdef" * 4, "a", "Pod_1.x-y"):
        Env(_env(CNI_CONTAINERID=cid)).need("container_id", "netns", "ifname")
    Env(_env(CNI_IFNAME="x" * 15)).need("ifname")


# --- item 8: malformed input is a 6 or 7 naming the field, never 999 ---------------------------------

@pytest.mark.parametrize("stdin", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff\xfe", b"1" * 5000])
def test_undecodable_stdin_is_code_6(tmp_path, stdin):
    rc, out = dispatch({**_env(), "PODWIRE_CNI_LOG": str(tmp_path / "log")}, stdin)
    assert rc == 1 and json.loads(out)["code"] in (6, 7)


@pytest.mark.parametrize("key,value,field", [
    ("runtimeConfig", [], "runtimeConfig"), ("runtimeConfig", "x", "runtimeConfig"),
    ("runtimeConfig", {"portMappings": {}}, "portMappings"),
    ("runtimeConfig", {"portMappings": [5]}, "portMappings[0]"),
    ("logFile", 5, "logFile"), ("logFile", ["/x"], "logFile"), ("logFile", "relative.log", "logFile"),
    ("stateDir", {"a": 1}, "stateDir"), ("stateDir", "state", "stateDir"), ("stateDir", "/a\0b", "stateDir"),
    ("name", "..", "name"), ("name", 5, "name"), ("bridge", "br\n0", "bridge"), ("bridge", 'br"0', "bridge"),
    ("bridge", "br 0", "bridge"), ("bridge", "", "bridge"), ("bridge", 7, "bridge"),
])
def test_malformed_config_names_the_field(key, value, field):
    with pytest.raises(CNIError) as e:
        parse_netconf(conf(**{key: value}))
    assert e.value.code == 7 and field in e.value.msg


@pytest.mark.parametrize("prev,field", [
    ({"ips": {}}, "ips"), ({"ips": [5]}, "ips"), ({"ips": [{"address": 5}]}, "ips[0].address"),
    ({"ips": [{}]}, "ips[0].address"), ({"ips": [{"address": "10.1.0.2"}]}, "ips[0].address"),
    ({"ips": [{"address": "garbage/24"}]}, "ips[0].address"),
    ({"ips": [{"address": "10.1.0.2/24", "gateway": []}]}, "ips[0].gateway"),
    ({"ips": [{"address": "10.1.0.2/24", "interface": "2"}]}, "ips[0].interface"),
    ({"routes": [{"gw": "10.1.0.1"}]}, "routes[0].dst"), ({"routes": [{"dst": "x"}]}, "routes[0].dst"),
    ({"routes": [{"dst": "0.0.0.0/0", "mtu": "9000"}]}, "routes[0].mtu"),
    ({"routes": [{"dst": "0.0.0.0/0", "table": -1}]}, "routes[0].table"),
    ({"interfaces": [{"name": 5}]}, "interfaces[0].name"), ({"interfaces": [{"mtu": True}]}, "interfaces[0].mtu"),
    ({"interfaces": "eth0"}, "interfaces"), ({"dns": []}, "dns"),
])
def test_malformed_prev_result_names_the_field(prev, field):
    with pytest.raises(CNIError) as e:
        Result.from_json(prev)
    assert e.value.code == 7 and f"prevResult.{field}" in e.value.msg


def test_prev_result_addresses_come_back_canonical():
    r = Result.from_json({"ips": [{"address": "FD00::0:5/64", "gateway": "FD00::1"}],
                          "routes": [{"dst": "::/0", "gw": "fd00::1", "mtu": 1400}]})
    assert (r.ips[0].address, r.ips[0].gateway, r.routes[0].mtu) == ("fd00::5/64", "fd00::1", 1400)


def _mutations(rng: random.Random, value, depth=0):
    """A copy of `value` with one node replaced by something hostile."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        return {**value, key: _mutations(rng, value[key], depth + 1)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return value[:i] + [_mutations(rng, value[i], depth + 1)] + value[i + 1:]
    return rng.choice(HOSTILE_TEXT + HOSTILE_VALUES + [{"x": INJECTION}, [INJECTION], [[]], [{}]])


def valid_config(tmp) -> dict:
    raw = conf(
    bridge="podwire0", mtu=1450, ipMasq=True, logFile=f"{tmp}/cni.log", stateDir=f"{tmp}/state",
    ipam={"type": "host-local",
          "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}], [{"subnet": "fd00::/64"}]],
          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.1.0.9"}], "dataDir": f"{tmp}/ipam"},
    runtimeConfig={"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "udp", "hostIP": "192.0.2.1"}]},
    prevResult={"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/x"}],
                "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}], "dns": {}},
    )
    raw["cni.dev/valid-attachments"] = [{"containerID": "abc", "ifname": "eth0"}]
    return raw


@pytest.mark.parametrize("verb", ["CHECK", "GC", "STATUS", "DEL"])
def test_fuzzed_configs_never_give_999(tmp_path, verb):
    """Seeded mutations of a valid config, through the whole verb up to the first kernel or disk
    access (the netns does not exist): always a coded error, never 999."""
    rng = random.Random(f"podwire-{verb}")
    valid = valid_config(tmp_path)
    seen_999 = []
    for _ in range(400):
        raw = _mutations(rng, valid)
        env = {**_env(CNI_COMMAND=verb), "PODWIRE_CNI_LOG": str(tmp_path / "log")}
        rc, out = dispatch(env, json.dumps(raw).encode())
        if rc and json.loads(out)["code"] == 999:
            seen_999.append((json.loads(out)["msg"], json.dumps(raw)[:300]))
    assert not seen_999, seen_999[:5]


@pytest.mark.parametrize("policy", [
    "yes", [], {"socket": "relative.sock"}, {"socket": "/x" * 60}, {"socket": 5},
    {"socket": "/run/p.sock", "timeout": 0}, {"socket": "/run/p.sock", "timeout": "15"},
    {"socket": "/run/p.sock", "namespacesFile": "ns.json"}, {"socket": "/run/p\0.sock"},
])
def test_a_bad_policy_option_is_refused_with_code_7(policy):
    assert code_of(conf(policy=policy)) == 7


def test_policy_gate_reads_the_pod_from_cni_args_only():
    from cni_plugin.policy_gate import pod_of

    assert pod_of("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=u-1") == ("x", "a", "u-1")
    assert pod_of("IgnoreUnknown=1") is None and pod_of("") is None and pod_of("K8S_POD_NAME=a") is None
