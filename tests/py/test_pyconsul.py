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
