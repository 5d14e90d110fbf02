#!/usr/bin/env python3
"""Load generator of ci/bench-catalog (standard library only: threads, http.client keep-alive
connections). Prints RESULT lines on stdout, progress as `# ...` on stderr.

  bench-catalog.py ae --agent H:P --server H:P --label L [--n 5000] [--clients 16]
      Registers N services (one instance each, a TTL check registered passing) on the agent
      with CLIENTS concurrent keep-alive clients; once the agent took them all, polls the
      server's /v1/catalog/services every 100 ms until all N are there. Then deregisters them
      the same way and waits until they are gone.

  bench-catalog.py select --agent H:P --servers H:P,... --label L [--watchers 200]
                          [--duration 10] [--rate 200] [--churners 4]
      Registers `web` (3 agent services) and 1,000 other instances (100 services x 10, on
      10 nodes, through /v1/catalog/register) plus 20 other agent services, opens WATCHERS
      long-polls on /v1/health/service/web, churns unrelated writes for DURATION s at RATE
      writes/s, then changes `web` once. Counts the blocking-query wakeups on the agent and on
      the servers (`--servers` may name the agent itself; it is counted once).

Exits 1 when a scenario gets nothing done.
"""

import argparse
import http.client
import json
import sys
import threading
import time

TTL = "30m"  # long enough that no TTL check expires during a run


def log(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


class Conn:
    """One keep-alive HTTP/1.1 connection; reconnects (and retries once) when it breaks."""

    def __init__(self, addr, timeout=30.0):
        self.host, self.port = split_addr(addr)
        self.timeout = timeout
        self.c = None

    def request(self, method, path, body=None):
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=data)
                r = self.c.getresponse()
                payload = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, r, payload
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method, path, body=None):
        """The request, which must answer 200; returns the body."""
        status, _, payload = self.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {payload[:200]!r}")
        return payload

    def json(self, path):
        return json.loads(self.ok("GET", path))

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def metrics(addr):
    """The agent's Prometheus metrics, by name (labels left out; values of a name summed)."""
    c = Conn(addr, timeout=10)
    try:
        text = c.ok("GET", "/v1/agent/metrics?format=prometheus").decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def blocking_counters(addrs):
    """{addr: (open blocking queries, wakeups so far)} for each agent."""
    out = {}
    for a in addrs:
        m = metrics(a)
        out[a] = (
            int(m.get("consul_http_blocking_queries", 0)),
            int(m.get("consul_http_blocking_wakeups_total", 0)),
        )
    return out


def run_pool(n_threads, items, work, addr):
    """Run work(conn, item) for every item on n_threads threads, each with its own keep-alive
    connection to addr. Returns (successes, failures, first error)."""
    lock = threading.Lock()
    it = iter(items)
    counts = {"ok": 0, "fail": 0, "err": None}

    def worker():
        c = Conn(addr)
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                break
            try:
                work(c, item)
                ok = True
            except Exception as e:  # counted and reported, not fatal
                ok = False
                with lock:
                    counts["err"] = counts["err"] or str(e)
            with lock:
                counts["ok" if ok else "fail"] += 1
        c.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts["ok"], counts["fail"], counts["err"]


def fmt(x, digits=2):
    return "nan" if x is None else f"{x:.{digits}f}"


# ------------------------------------------------------------------------ anti-entropy
def scenario_ae(a):
    prefix = "ae-"
    names = [f"{prefix}{i:05d}" for i in range(a.n)]
    poll = Conn(a.server, timeout=30)

    def count_services():
        return sum(1 for k in poll.json("/v1/catalog/services") if k.startswith(prefix))

    before = count_services()
    if before:
        log(f"{a.label}: {before} {prefix}* services already in the catalog")

    def register(c, name):
        c.ok(
            "PUT",
            "/v1/agent/service/register",
            {
                "ID": name,
                "Name": name,
                "Port": 8080,
                "Tags": ["bench"],
                "Check": {"CheckID": f"{name}:ttl", "Name": "ttl", "TTL": TTL,
                          "Status": "passing"},
            },
        )

    def deregister(c, name):
        c.ok("PUT", f"/v1/agent/service/deregister/{name}")

    fails = 0
    for phase, work, want in (("register", register, a.n), ("deregister", deregister, 0)):
        done = {}

        def load():
            done["r"] = run_pool(a.clients, names, work, a.agent)
            done["t"] = time.monotonic()

        t0 = time.monotonic()
        t = threading.Thread(target=load, daemon=True)
        t.start()
        # Once the agent took them all (the catalog cannot have them sooner), poll the
        # server's service list (names only: the cheapest full count) every 100 ms.
        deadline = t0 + a.timeout
        t.join(timeout=a.timeout)
        seen, t_all = None, None
        while time.monotonic() < deadline:
            try:
                seen = count_services()
            except Exception as e:
                log(f"{a.label}: poll failed: {e}")
                seen = None
            if seen == want:
                t_all = time.monotonic()
                break
            time.sleep(0.1)
        ok, fail, err = done.get("r", (0, a.n, "did not finish"))
        api_s = done["t"] - t0 if "t" in done else None
        cat_s = None if t_all is None else t_all - t0
        if err:
            log(f"{a.label} {phase}: {fail} failed, e.g. {err}")
        passing = ""
        if phase == "register":
            checks = poll.json("/v1/health/state/passing")
            n_pass = sum(1 for ch in checks if ch.get("ServiceID", "").startswith(prefix))
            passing = f" passing_after={n_pass}"
        print(
            f"RESULT scenario=ae-{phase} agent={a.label} n={a.n} clients={a.clients} "
            f"ok={ok} failed={fail} api_s={fmt(api_s)} "
            f"api_per_s={fmt(ok / api_s if api_s else None, 0)} "
            f"catalog_s={fmt(cat_s)} catalog_per_s={fmt(a.n / cat_s if cat_s else None, 0)} "
            f"catalog_now={seen}{passing} poll=catalog-services@100ms",
            flush=True,
        )
        if ok == 0 or cat_s is None:
            fails += 1
    poll.close()
    return fails


# ----------------------------------------------------------------- blocking selectivity
class Watcher(threading.Thread):
    """One long-poll on its own connection; records when and how it returned."""

    def __init__(self, addr, path):
        super().__init__(daemon=True)
        self.addr, self.path = addr, path
        self.returned = None  # (monotonic time, status, X-Consul-Index)
        self.done = threading.Event()

    def run(self):
        c = Conn(self.addr, timeout=400)
        try:
            status, r, _ = c.request("GET", self.path)
            index = r.getheader("X-Consul-Index")
        except Exception as e:
            status, index = f"error:{type(e).__name__}", None
        self.returned = (time.monotonic(), status, index)
        self.done.set()
        c.close()


class Select:
    """The selectivity scenario on one agent (see the module docs)."""

    KINDS = ["kv", "catalog-service", "catalog-check", "agent-service", "agent-check"]

    def __init__(self, a):
        self.a = a
        self.ag = Conn(a.agent)
        servers = [s for s in a.servers.split(",") if s]
        self.counted = list(dict.fromkeys([a.agent] + servers))
        self.nodes = [f"sel-n{j}" for j in range(10)]
        self.others = [(f"other-{s:03d}", j) for s in range(100) for j in range(10)]
        self.locals = [f"local-{i:02d}" for i in range(20)]
        self.webs = [f"web-{i}" for i in range(3)]

    def catalog_reg(self, c, svc, j, tags=("t0",), meta=None, status="passing"):
        sid = f"{svc}-{j}"
        c.ok(
            "PUT",
            "/v1/catalog/register",
            {
                "Node": self.nodes[j],
                "Address": f"10.9.0.{j + 1}",
                "Service": {"ID": sid, "Service": svc, "Port": 9000 + j, "Tags": list(tags),
                            "Meta": meta or {}},
                "Check": {"CheckID": f"{sid}:hc", "Name": "hc", "ServiceID": sid,
                          "Status": status},
            },
        )

    def check_flip(self, c, svc, j, status):
        sid = f"{svc}-{j}"
        c.ok(
            "PUT",
            "/v1/catalog/register",
            {
                "Node": self.nodes[j],
                "Address": f"10.9.0.{j + 1}",
                "Check": {"CheckID": f"{sid}:hc", "Name": "hc", "ServiceID": sid,
                          "Status": status},
            },
        )

    @staticmethod
    def agent_reg(c, sid, name, tags):
        c.ok(
            "PUT",
            "/v1/agent/service/register",
            {"ID": sid, "Name": name, "Port": 7000, "Tags": tags,
             "Check": {"CheckID": f"{sid}:ttl", "Name": "ttl", "TTL": TTL, "Status": "passing"}},
        )

    def index_of(self, path):
        """The X-Consul-Index of a read through the agent (None if it is refused)."""
        status, r, _ = self.ag.request("GET", path)
        return int(r.getheader("X-Consul-Index")) if status == 200 else None

    def churn_op(self, c, k):
        kind = self.KINDS[k % len(self.KINDS)]
        r = k // len(self.KINDS)
        if kind == "kv":
            c.ok("PUT", f"/v1/kv/churn/{r % 1000}", str(k).encode())
        elif kind == "catalog-service":
            svc, j = self.others[(r * 7) % len(self.others)]
            self.catalog_reg(c, svc, j, tags=(f"t{r % 5}",), meta={"rev": str(r)})
        elif kind == "catalog-check":
            svc, j = self.others[(r * 13) % len(self.others)]
            self.check_flip(c, svc, j, "warning" if r % 2 == 0 else "passing")
        elif kind == "agent-service":
            sid = self.locals[r % len(self.locals)]
            self.agent_reg(c, sid, sid, [f"r{r}"])
        else:
            sid = self.locals[r % len(self.locals)]
            verb = "warn" if (r // len(self.locals)) % 2 == 0 else "pass"
            c.ok("PUT", f"/v1/agent/check/{verb}/{sid}:ttl")

    def churn(self):
        """RATE writes/s for DURATION s on CHURNERS connections; {kind: [ok, failed]}."""
        a = self.a
        tally = {k: [0, 0] for k in self.KINDS}
        lock = threading.Lock()
        seq = {"k": 0, "err": None}
        start = time.monotonic()
        stop_at = start + a.duration

        def churner():
            c = Conn(a.agent)
            while True:
                with lock:
                    k = seq["k"]
                    seq["k"] += 1
                due = start + k / a.rate
                if due >= stop_at:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    self.churn_op(c, k)
                    good = True
                except Exception as e:
                    good = False
                    with lock:
                        seq["err"] = seq["err"] or str(e)
                with lock:
                    tally[self.KINDS[k % len(self.KINDS)]][0 if good else 1] += 1
            c.close()

        threads = [threading.Thread(target=churner, daemon=True) for _ in range(a.churners)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if seq["err"]:
            log(f"{a.label}: churn writes failed, e.g. {seq['err']}")
        return tally, time.monotonic() - start

    def setup(self):
        """Register everything and wait until the catalog shows this agent's services; the
        index of web, or None."""
        ag, a = self.ag, self.a
        me = ag.json("/v1/agent/self")["Config"]["NodeName"]
        t0 = time.monotonic()
        for sid in self.webs:
            self.agent_reg(ag, sid, "web", ["v1"])
        for sid in self.locals:
            self.agent_reg(ag, sid, sid, ["r0"])
        _, fail, err = run_pool(8, self.others, lambda c, o: self.catalog_reg(c, *o), a.agent)
        if fail:
            log(f"{a.label}: {fail} of {len(self.others)} catalog registrations failed: {err}")
        # Anti-entropy pushes the agent's services: wait until the catalog shows them all.
        deadline = time.monotonic() + 60
        while True:
            status, r, body = ag.request("GET", "/v1/health/service/web")
            mine = set()
            if status == 200:
                mine = {e["Service"]["ID"] for e in json.loads(body) if e["Node"]["Node"] == me}
            names = ag.json("/v1/catalog/services") if mine == set(self.webs) else {}
            if names and all(s in names for s in self.locals):
                break
            if time.monotonic() > deadline:
                log(f"{a.label}: its services are not in the catalog after 60 s")
                return None
            time.sleep(0.1)
        index = int(r.getheader("X-Consul-Index"))
        log(f"{a.label}: setup {len(self.others)} catalog instances, "
            f"{len(self.webs) + len(self.locals)} agent services on {me} in "
            f"{time.monotonic() - t0:.1f} s; web index {index}")
        return index

    def cleanup(self):
        for sid in self.webs + self.locals:
            self.ag.request("PUT", f"/v1/agent/service/deregister/{sid}")
        for node in self.nodes:
            self.ag.request("PUT", "/v1/catalog/deregister", {"Node": node})
        self.ag.close()

    def run(self):
        a, ag, counted = self.a, self.ag, self.counted
        index = self.setup()
        if index is None:
            return 1
        # --- open the long-polls
        open0 = sum(v[0] for v in blocking_counters(counted).values())
        path = f"/v1/health/service/web?index={index}&wait=5m"
        watchers = [Watcher(a.agent, path) for _ in range(a.watchers)]
        for w in watchers:
            w.start()
        deadline = time.monotonic() + 30
        while True:
            cur = blocking_counters(counted)
            opened = sum(v[0] for v in cur.values()) - open0
            done = sum(1 for w in watchers if w.returned)
            if opened + done >= a.watchers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        where = ",".join(f"{k}={v[0]}" for k, v in cur.items() if v[0])
        log(f"{a.label}: {opened} of {a.watchers} long-polls open ({where or 'none'})")
        time.sleep(0.5)

        # --- churn
        idx0 = (self.index_of("/v1/catalog/services"), self.index_of("/v1/health/state/any"))
        m0 = blocking_counters(counted)
        tally, churn_s = self.churn()
        time.sleep(a.settle)  # let anti-entropy push the last agent changes
        m1 = blocking_counters(counted)
        idx1 = (self.index_of("/v1/catalog/services"), self.index_of("/v1/health/state/any"))
        early = [w.returned for w in watchers if w.returned is not None]
        early_by = {}
        for _, status, _ in early:
            early_by[status] = early_by.get(status, 0) + 1
        writes = sum(v[0] for v in tally.values())
        failed = sum(v[1] for v in tally.values())

        # --- one change to web
        tw = time.monotonic()
        self.agent_reg(ag, "web-0", "web", ["v2"])
        t_api = time.monotonic() - tw
        for w in watchers:
            w.done.wait(timeout=max(0.0, tw + 30 - time.monotonic()))
        m2 = blocking_counters(counted)
        late = [w.returned for w in watchers if w.returned and w.returned[0] >= tw]
        lat = sorted(t - tw for t, _, _ in late)
        answered = sum(1 for _, st, ix in late if st == 200 and int(ix or 0) > index)

        def deltas(x, y):
            return {k: y[k][1] - x[k][1] for k in counted}

        d_churn, d_web = deltas(m0, m1), deltas(m1, m2)
        wake_all = sum(d_churn.values())

        def kv(d):
            return ",".join(f"{k}:{v}" for k, v in d.items())

        print(
            f"RESULT scenario=select-churn agent={a.label} watchers={a.watchers} "
            f"open={opened} churn_s={fmt(churn_s)} writes={writes} failed={failed} "
            f"writes_per_s={fmt(writes / churn_s if churn_s else None, 0)} "
            f"by_kind={kv({k: v[0] for k, v in tally.items()})} "
            f"wakeups_agent={d_churn[a.agent]} wakeups_all={wake_all} "
            f"wakeups_per_watcher={fmt(wake_all / opened if opened > 0 else None)} "
            f"wakeups_by_agent={kv(d_churn)} early_returns={len(early)}"
            f"{' early_by_status=' + kv(early_by) if early_by else ''} "
            f"services_index={idx0[0]}..{idx1[0]} checks_index={idx0[1]}..{idx1[1]}",
            flush=True,
        )
        print(
            f"RESULT scenario=select-web agent={a.label} watchers={a.watchers} "
            f"answered={answered} returned={len(lat)} api_ms={fmt(1000 * t_api, 1)} "
            f"first_ms={fmt(1000 * lat[0] if lat else None, 1)} "
            f"p50_ms={fmt(1000 * lat[len(lat) // 2] if lat else None, 1)} "
            f"all_ms={fmt(1000 * lat[-1] if answered == a.watchers else None, 1)} "
            f"wakeups_by_agent={kv(d_web)}",
            flush=True,
        )
        return 1 if writes == 0 or opened <= 0 else 0


def scenario_select(a):
    sel = Select(a)
    try:
        return sel.run()
    finally:
        # What this scenario registered goes, so that the next one starts from the same
        # catalog (a long-poll that never answered is left to the process exit).
        sel.cleanup()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ae = sub.add_parser("ae")
    ae.add_argument("--agent", required=True)
    ae.add_argument("--server", required=True)
    ae.add_argument("--label", required=True)
    ae.add_argument("--n", type=int, default=5000)
    ae.add_argument("--clients", type=int, default=16)
    ae.add_argument("--timeout", type=float, default=300)
    se = sub.add_parser("select")
    se.add_argument("--agent", required=True)
    se.add_argument("--servers", required=True)
    se.add_argument("--label", required=True)
    se.add_argument("--watchers", type=int, default=200)
    se.add_argument("--duration", type=float, default=10)
    se.add_argument("--rate", type=float, default=200)
    se.add_argument("--churners", type=int, default=4)
    se.add_argument("--settle", type=float, default=1.5)
    a = p.parse_args()
    fails = scenario_ae(a) if a.cmd == "ae" else scenario_select(a)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
