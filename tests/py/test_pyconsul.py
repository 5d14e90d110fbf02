"""py-consul (the real client, import name `consul`) against a running Tribune dev agent.

The agent's address comes from CONSUL_HTTP_ADDR (host:port); tests/py/run.sh starts one.
"""
import os
import threading
import time
import uuid

import consul
import pytest


@pytest.fixture(scope="module")
def c():
    addr = os.environ.get("CONSUL_HTTP_ADDR")
    assert addr, "CONSUL_HTTP_ADDR must point at a running agent"
    return consul.Consul()


@pytest.fixture
def prefix():
    return f"pytest/{uuid.uuid4().hex}/"


def test_status_leader(c):
    assert c.status.leader() != ""
    assert len(c.status.peers()) >= 1


def test_put_get_flags_binary(c, prefix):
    assert c.kv.put(prefix + "a", "hello") is True
    index, data = c.kv.get(prefix + "a")
    assert data["Value"] == b"hello"
    assert data["Key"] == prefix + "a"
    assert data["CreateIndex"] == data["ModifyIndex"] == int(index)
    assert c.kv.put(prefix + "f", "x", flags=77) is True
    assert c.kv.get(prefix + "f")[1]["Flags"] == 77
    blob = bytes(range(256))
    assert c.kv.put(prefix + "bin", blob) is True
    assert c.kv.get(prefix + "bin")[1]["Value"] == blob
    # Empty value comes back as None.
    assert c.kv.put(prefix + "empty", None) is True
    assert c.kv.get(prefix + "empty")[1]["Value"] is None


def test_missing_key(c, prefix):
    index, data = c.kv.get(prefix + "missing")
    assert data is None
    assert int(index) >= 1


def test_cas(c, prefix):
    k = prefix + "cas"
    assert c.kv.put(k, "1", cas=0) is True
    assert c.kv.put(k, "2", cas=0) is False
    _, data = c.kv.get(k)
    assert c.kv.put(k, "3", cas=data["ModifyIndex"] + 1000) is False
    assert c.kv.put(k, "3", cas=data["ModifyIndex"]) is True
    assert c.kv.get(k)[1]["Value"] == b"3"
    _, data = c.kv.get(k)
    assert c.kv.delete(k, cas=data["ModifyIndex"] + 1000) is False
    assert c.kv.delete(k, cas=data["ModifyIndex"]) is True
    assert c.kv.get(k)[1] is None


def test_recurse_keys_delete(c, prefix):
    for k in ["web/foo", "web/bar", "web/sub/x", "db"]:
        assert c.kv.put(prefix + k, k) is True
    _, items = c.kv.get(prefix + "web/", recurse=True)
    assert [i["Key"] for i in items] == [prefix + k for k in ["web/bar", "web/foo", "web/sub/x"]]
    assert [i["Value"] for i in items] == [b"web/bar", b"web/foo", b"web/sub/x"]
    _, keys = c.kv.get(prefix + "web/", keys=True, separator="/")
    assert keys == [prefix + "web/bar", prefix + "web/foo", prefix + "web/sub/"]
    assert c.kv.delete(prefix + "web/", recurse=True) is True
    _, items = c.kv.get(prefix + "web/", recurse=True)
    assert items is None
    assert c.kv.get(prefix + "db")[1]["Value"] == b"db"
    assert c.kv.delete(prefix + "db") is True


def test_consistency_modes(c, prefix):
    c.kv.put(prefix + "m", "v")
    for mode in ("consistent", "stale"):
        assert c.kv.get(prefix + "m", consistency=mode)[1]["Value"] == b"v"


def test_blocking_get(c, prefix):
    k = prefix + "block"
    c.kv.put(k, "before")
    index, _ = c.kv.get(k)
    result = {}

    def waiter():
        start = time.monotonic()
        result["value"] = c.kv.get(k, index=index, wait="20s")
        result["took"] = time.monotonic() - start

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    c.kv.put(prefix + "unrelated", "x")
    time.sleep(0.3)
    assert t.is_alive(), "woken by a write to another key"
    c.kv.put(k, "after")
    t.join(10)
    assert not t.is_alive()
    new_index, data = result["value"]
    assert int(new_index) > int(index)
    assert data["Value"] == b"after"
    assert result["took"] < 5


def test_blocking_get_times_out(c, prefix):
    k = prefix + "quiet"
    c.kv.put(k, "v")
    index, _ = c.kv.get(k)
    start = time.monotonic()
    new_index, data = c.kv.get(k, index=index, wait="1s")
    took = time.monotonic() - start
    assert new_index == index
    assert 1.0 <= took < 3
    assert data["Value"] == b"v"


def test_agent_self_and_members(c):
    me = c.agent.self()
    assert me["Config"]["Datacenter"]
    members = c.agent.members()
    assert members[0]["Status"] == 1


def test_catalog_register_health_and_deregister(c):
    node = f"py-{uuid.uuid4().hex[:8]}"
    name = f"web-{uuid.uuid4().hex[:8]}"
    service = {"ID": f"{name}-1", "Service": name, "Tags": ["v1"], "Port": 8080}
    check = {"CheckID": f"{name}-alive", "Name": "alive", "ServiceID": f"{name}-1",
             "Status": "passing"}
    assert c.catalog.register(node, "10.9.0.1", service=service, check=check) is True
    index, nodes = c.catalog.service(name)
    assert [n["ServiceID"] for n in nodes] == [f"{name}-1"]
    assert nodes[0]["Node"] == node and nodes[0]["ServicePort"] == 8080
    _, tagged = c.catalog.service(name, tag="v1")
    assert len(tagged) == 1
    _, services = c.catalog.services()
    assert services[name] == ["v1"]
    _, entries = c.health.service(name, passing=True)
    assert entries[0]["Service"]["ID"] == f"{name}-1"
    assert entries[0]["Node"]["Datacenter"]
    assert entries[0]["Checks"][0]["Status"] == "passing"
    _, mine = c.catalog.node(node)
    assert f"{name}-1" in mine["Services"]

    # A long-poll on the service returns when its check goes critical.
    index, _ = c.health.service(name)
    result = {}

    def watch():
        result["index"], result["entries"] = c.health.service(
            name, index=index, wait="10s", passing=True)

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    failing = dict(check, Status="critical", Output="down")
    assert c.catalog.register(node, "10.9.0.1", check=failing) is True
    t.join(5)
    assert not t.is_alive()
    assert result["index"] > index
    assert result["entries"] == []
    _, critical = c.health.state("critical")
    assert any(ch["CheckID"] == f"{name}-alive" for ch in critical)

    assert c.catalog.deregister(node) is True
    _, nodes = c.catalog.service(name)
    assert nodes == []


def eventually(f, timeout=10.0):
    """Call f until it returns something true, or fail after timeout seconds."""
    deadline = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_agent_service_with_ttl_check_reaches_health_by_anti_entropy(c):
    sid = "pyweb-" + uuid.uuid4().hex[:8]
    cid = f"service:{sid}"
    assert c.agent.service.register(
        "pyweb", service_id=sid, port=8123, tags=["a"], check=consul.Check.ttl("30s")
    ) is True
    services = c.agent.services()
    assert services[sid]["Service"] == "pyweb"
    assert services[sid]["Port"] == 8123
    assert services[sid]["Tags"] == ["a"]
    assert c.agent.service_definition(sid)["ContentHash"]
    checks = c.agent.checks()
    assert checks[cid]["Status"] == "critical"
    assert checks[cid]["ServiceID"] == sid

    assert c.agent.check.ttl_pass(cid, "ok") is True
    assert c.agent.checks()[cid]["Output"] == "ok"

    def passing_ids():
        _, nodes = c.health.service("pyweb", passing=True)
        return [n["Service"]["ID"] for n in nodes]

    eventually(lambda: sid in passing_ids())
    assert c.agent.service.maintenance(sid, True, "deploy") is True
    eventually(lambda: sid not in passing_ids())
    assert c.agent.service.maintenance(sid, False) is True
    eventually(lambda: sid in passing_ids())

    disk = "pydisk-" + uuid.uuid4().hex[:8]
    assert c.agent.check.register("disk", check=consul.Check.ttl("30s"), check_id=disk) is True
    assert c.agent.check.ttl_warn(disk, "80% used") is True
    assert c.agent.checks()[disk]["Status"] == "warning"
    assert c.agent.check.deregister(disk) is True
    assert disk not in c.agent.checks()

    assert c.agent.service.deregister(sid) is True
    assert sid not in c.agent.services()
    eventually(lambda: not [s for s in c.catalog.service("pyweb")[1] if s["ServiceID"] == sid])
