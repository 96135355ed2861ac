#!/usr/bin/env python3
"""A Proxmox VE API test double (a SIMULATOR, not Proxmox VE).

Answers the documented /api2/json endpoints a snapshot tool uses, with the
shapes of pve-manager / qemu-server / pve-container / pve-guest-common:

  GET    /nodes                                  node index
  GET    /cluster/resources?type=vm              guests of the cluster (node, vmid, type, template, status)
  GET    /nodes/{node}/{qemu|lxc}                guests of one node
  GET    /nodes/{node}/{type}/{vmid}/snapshot    snapshot list, ending with the `current` entry
  POST   /nodes/{node}/{type}/{vmid}/snapshot    snapname, vmstate (boolean), description -> UPID
  DELETE /nodes/{node}/{type}/{vmid}/snapshot/{snapname}                           -> UPID
  GET    /nodes/{node}/tasks/{upid}/status       status running|stopped, exitstatus
  GET    /nodes/{node}/tasks/{upid}/log          [{n, t}], total

Every answer is a JSON object with `data`; errors carry the message in the
HTTP reason phrase and in `message`, parameter errors in `errors` (HTTP 400).
Authentication is `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`
(401 otherwise). Privileges are checked per /vms/{vmid} (403 "Permission
check failed (/vms/ID, PRIV)"); guests without VM.Audit are silently left out
of lists, as the real API does. Like qemu-server, snapshot create and delete
run as tasks: a lock ("VM is locked (backup)"), "snapshot name 'x' already
used", "snapshot feature is not available" and "needed by replication" come
back as HTTP 200 + a UPID whose task fails with that exit status.

Usage: pve_simulator.py --scenario FILE --cert PEM --key PEM --stats FILE [--port 0]
Prints "LISTENING <port>" on stdout once it accepts connections. The
statistics file (JSON, rewritten atomically after every change) records the
maximum number of tasks in flight, every task and every request.

Scenario (JSON):
  node, nodes[]                 the node the agent asks about; all cluster nodes
  token {id, secret}            the one API token that authenticates
  privileges {"*"|vmid: [..]}   privileges per /vms/{vmid} (default VM.Audit + VM.Snapshot)
  task_seconds, fail_seconds    how long successful / refused tasks run
  status_blips                  the first N task-status requests answer 503
  guests[]: vmid, type (qemu|lxc), node, name, status, template,
            lock ("backup", …; forever unless one of:)
            lock_until_seconds (after simulator start),
            lock_seconds_after_first_attempt (after the first snapshot attempt hit it),
            snapshot_feature (false: "snapshot feature is not available"),
            freeze_warning (task ends "WARNINGS: 1" with this log line),
            create_error (the create task fails with this text),
            replicated_snapshots [names] (delete refused: needed by replication),
            http_error {status, message} (POST snapshot answers this),
            snapshots[]: name ("{stamp}" = its UTC time), description,
                         snaptime | age_days, snapstate, parent

Python 3 standard library only.
"""

import argparse
import heapq
import json
import os
import re
import ssl
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# pve-configid (PVE::JSONSchema), the format of pve-snapshot-name, maxLength 40.
CONFIGID_RE = re.compile(r"^[a-z][a-z0-9_-]+$", re.IGNORECASE)
BOOL_TRUE = re.compile(r"^(1|true|yes|on)$", re.IGNORECASE)
BOOL_FALSE = re.compile(r"^(0|false|no|off)$", re.IGNORECASE)


class ApiError(Exception):
    """An HTTP error answer: status, message (reason phrase), optional `errors`."""

    def __init__(self, status, message, errors=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


class Sim:
    """The whole simulated cluster; every method runs under self.lock."""

    def __init__(self, scenario, stats_path):
        self.lock = threading.Lock()
        self.t0 = time.time()
        self.stats_path = stats_path
        self.nodes = scenario.get("nodes") or [scenario["node"]]
        self.token_id = scenario["token"]["id"]
        self.token_secret = scenario["token"]["secret"]
        self.privileges = scenario.get(
            "privileges", {"*": ["VM.Audit", "VM.Snapshot"]}
        )
        self.task_seconds = float(scenario.get("task_seconds", 0.3))
        # The first N task-status requests fail as during a pveproxy restart.
        self.status_blips = int(scenario.get("status_blips", 0))
        self.fail_seconds = float(scenario.get("fail_seconds", 0.05))
        self.guests = {}
        for g in scenario["guests"]:
            g = dict(g)
            g.setdefault("type", "qemu")
            g.setdefault("node", self.nodes[0])
            g.setdefault("name", f"guest{g['vmid']}")
            g.setdefault("status", "running")
            g.setdefault("template", 0)
            g.setdefault("lock", None)
            g.setdefault("snapshot_feature", True)
            snaps = {}
            for s in g.get("snapshots", []):
                s = dict(s)
                s.setdefault("description", "")
                # Scenario files can say how old a snapshot is instead of when it was taken.
                if "age_days" in s:
                    s["snaptime"] = int(self.t0 - float(s.pop("age_days")) * 86400)
                s.setdefault("snaptime", int(self.t0) - 3600)
                s["name"] = s["name"].replace(
                    "{stamp}", time.strftime("%Y%m%d%H%M%S", time.gmtime(s["snaptime"])))
                snaps[s["name"]] = s
            g["snapshots"] = snaps
            self.guests[int(g["vmid"])] = g
        self.tasks = {}
        # Time-ordered events (at, seq, fn): task ends, lock releases, and the
        # steps of task processes; run by advance() with self.clock = their time.
        self.events = []
        self.seq = 0
        self.clock = None
        for g in self.guests.values():
            if g["lock"] and g.get("lock_until_seconds") is not None:
                self.schedule(self.t0 + float(g["lock_until_seconds"]), self.lock_release(g, "lock_until_seconds"))
        self.pid = 4000
        self.max_in_flight = 0
        self.requests = []
        self.deleted = []
        self.created = []
        self.write_stats()

    # ---- bookkeeping ---------------------------------------------------
    def now(self):
        return time.time()

    def write_stats(self):
        now = self.now()
        stats = {
            "max_in_flight": self.max_in_flight,
            "in_flight": sum(1 for t in self.tasks.values() if self.running(t, now)),
            "tasks": [
                {k: t[k] for k in ("upid", "type", "vmid", "exitstatus", "start", "end")}
                for t in self.tasks.values()
            ],
            "created": self.created,
            "deleted": self.deleted,
            "requests": self.requests,
            "snapshots": {
                str(vmid): sorted(g["snapshots"].keys()) for vmid, g in self.guests.items()
            },
        }
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, self.stats_path)

    def t(self):
        """The current simulated instant: an event's own time while it runs."""
        return self.clock if self.clock is not None else time.time()

    def schedule(self, at, fn):
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, fn))

    def lock_release(self, g, key):
        """An event that clears a scenario lock unless something else already did."""
        def fire():
            if g.get(key) is not None:
                g.pop(key)
                g["lock"] = None
        return fire

    def advance(self):
        """Run, in time order, every event whose time has come; True if any ran."""
        now = self.now()
        ran = False
        while self.events and self.events[0][0] <= now:
            at, _, fn = heapq.heappop(self.events)
            self.clock = at
            try:
                fn()
            except Exception:  # a simulator bug must not wedge the whole simulator
                traceback.print_exc(file=sys.stderr)
            finally:
                self.clock = None
            ran = True
        return ran

    def guest_lock(self, g):
        return g["lock"]

    # ---- auth ----------------------------------------------------------
    def authenticate(self, header):
        if not header:
            raise ApiError(401, "No ticket")
        m = re.match(r"^PVEAPIToken=([^=]+)=(.+)$", header)
        if not m:
            raise ApiError(401, "No ticket")
        tokenid, secret = m.group(1), m.group(2)
        if "!" not in tokenid or "@" not in tokenid.split("!")[0]:
            raise ApiError(401, "invalid token value!")
        if tokenid != self.token_id:
            user, name = tokenid.split("!", 1)
            raise ApiError(401, f"no such token '{name}' for user '{user}'")
        if secret != self.token_secret:
            raise ApiError(401, "invalid token value!")
        return tokenid

    def privs(self, vmid):
        return self.privileges.get(str(vmid), self.privileges.get("*", []))

    def has(self, vmid, priv):
        return priv in self.privs(vmid)

    def check(self, vmid, priv):
        if not self.has(vmid, priv):
            raise ApiError(403, f"Permission check failed (/vms/{vmid}, {priv})")

    # ---- tasks ---------------------------------------------------------
    def new_task(self, node, dtype, vmid, user, exitstatus, log, seconds, on_finish=None):
        """A task whose outcome is known now: its first log line shows at once,
        the rest (and `exitstatus`) once it ends `seconds` later."""
        task = self.open_task(node, dtype, vmid, user)
        task["end"] = task["start"] + seconds
        task["exitstatus"] = exitstatus
        task["log"] = [(task["start"] if i == 0 else task["end"], line) for i, line in enumerate(log)]

        def finish():
            task["done"] = True
            if on_finish:
                on_finish()
        self.schedule(task["end"], finish)
        self.count_in_flight()
        return task["upid"]

    def open_task(self, node, dtype, vmid, user):
        """A running task (UPID as PVE::UPID::encode); end/exitstatus set when it finishes."""
        now = self.t()
        self.pid += 1
        upid = "UPID:%s:%08X:%08X:%08X:%s:%s:%s:" % (
            node, self.pid, 0x1A2B00 + self.pid, int(now), dtype, vmid, user,
        )
        task = {
            "upid": upid, "node": node, "type": dtype, "vmid": vmid, "user": user,
            "pid": self.pid, "starttime": int(now), "start": now, "end": None,
            "exitstatus": None, "log": [], "done": False,
        }
        self.tasks[upid] = task
        return task

    def running(self, task, now=None):
        now = self.now() if now is None else now
        return task["end"] is None or task["end"] > now

    def count_in_flight(self):
        now = self.t()
        running = sum(1 for t in self.tasks.values() if self.running(t, now))
        self.max_in_flight = max(self.max_in_flight, running)

    # ---- lookups -------------------------------------------------------
    def guest_on(self, node, gtype, vmid):
        """The guest's config as `node` sees it (qemu-server load_config)."""
        if node not in self.nodes:
            raise ApiError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known")
        g = self.guests.get(vmid)
        kind = "qemu-server" if gtype == "qemu" else "lxc"
        if g is None or g["node"] != node or g["type"] != gtype:
            raise ApiError(500, f"Configuration file 'nodes/{node}/{kind}/{vmid}.conf' does not exist")
        return g

    # ---- endpoints -----------------------------------------------------
    def get_nodes(self):
        return [{"node": n, "status": "online", "type": "node", "id": f"node/{n}"} for n in self.nodes]

    def resource(self, g):
        return {
            "id": f"{g['type']}/{g['vmid']}", "type": g["type"], "vmid": g["vmid"],
            "node": g["node"], "name": g["name"], "status": g["status"],
            "template": 1 if g["template"] else 0, "maxmem": 2147483648, "maxdisk": 34359738368,
        }

    def cluster_resources(self, query):
        rtype = query.get("type")
        if rtype not in (None, "vm", "node", "storage", "sdn"):
            raise ApiError(400, "Parameter verification failed.",
                           {"type": f"value '{rtype}' does not have a value in the enumeration 'vm, storage, node, sdn'"})
        out = []
        if rtype in (None, "vm"):
            out += [self.resource(g) for g in sorted(self.guests.values(), key=lambda g: g["vmid"])
                    if self.has(g["vmid"], "VM.Audit")]
        if rtype in (None, "node"):
            out += [{"id": f"node/{n}", "type": "node", "node": n, "status": "online"} for n in self.nodes]
        return out

    def node_guests(self, node, gtype):
        if node not in self.nodes:
            raise ApiError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known")
        out = []
        for g in sorted(self.guests.values(), key=lambda g: g["vmid"]):
            if g["node"] == node and g["type"] == gtype and self.has(g["vmid"], "VM.Audit"):
                e = {"vmid": g["vmid"], "name": g["name"], "status": g["status"]}
                if g["template"]:
                    e["template"] = 1
                out.append(e)
        return out

    def list_snapshots(self, node, gtype, vmid):
        self.check(vmid, "VM.Audit")
        g = self.guest_on(node, gtype, vmid)
        out = []
        for s in g["snapshots"].values():
            item = {"name": s["name"], "snaptime": s.get("snaptime", 0),
                    "description": s.get("description") or ""}
            if gtype == "qemu":
                item["vmstate"] = 1 if s.get("vmstate") else 0
            if s.get("parent"):
                item["parent"] = s["parent"]
            if s.get("snapstate"):
                item["snapstate"] = s["snapstate"]
            out.append(item)
        current = {"name": "current", "description": "You are here!", "digest": "%040x" % len(g["snapshots"])}
        if gtype == "qemu":
            current["running"] = 1 if g["status"] == "running" else 0
        if g.get("parent"):
            current["parent"] = g["parent"]
        out.append(current)
        return out

    def create_snapshot(self, node, gtype, vmid, params, user):
        allowed = {"snapname", "vmstate", "description"} if gtype == "qemu" else {"snapname", "description"}
        errors = {}
        for k in params:
            if k not in allowed:
                errors[k] = "property is not defined in schema and the schema does not allow additional properties"
        name = params.get("snapname")
        if name is None:
            errors["snapname"] = "property is missing and it is not optional"
        elif len(name) > 40:
            errors["snapname"] = "value may only be 40 characters long"
        elif not CONFIGID_RE.match(name):
            errors["snapname"] = f"invalid format - invalid configuration ID '{name}'"
        vmstate = params.get("vmstate")
        if vmstate is not None and "vmstate" not in errors:
            if BOOL_TRUE.match(vmstate):
                vmstate = True
            elif BOOL_FALSE.match(vmstate):
                vmstate = False
            else:
                errors["vmstate"] = f"type check ('boolean') failed - got '{vmstate}'"
        if errors:
            raise ApiError(400, "Parameter verification failed.", errors)
        self.check(vmid, "VM.Snapshot")
        g = self.guest_on(node, gtype, vmid)
        if name == "current":
            raise ApiError(500, "unable to use snapshot name 'current' (reserved name)")
        if name.lower() == "pending":
            raise ApiError(500, "unable to use snapshot name 'pending' (reserved name)")
        if g.get("http_error"):
            e = g["http_error"]
            raise ApiError(e.get("status", 500), e["message"])
        dtype = "qmsnapshot" if gtype == "qemu" else "vzsnapshot"
        kind = "VM" if gtype == "qemu" else "CT"
        # PVE::AbstractConfig::__snapshot_prepare, in this order.
        err = None
        if g["template"]:
            err = "you can't take a snapshot if it's a template"
        elif g["lock"]:
            err = f"{kind} is locked ({g['lock']})"
            # "lock_seconds_after_first_attempt": a backup that ends a while after
            # the first snapshot attempt ran into it, however late that came.
            after = g.pop("lock_seconds_after_first_attempt", None)
            if after is not None:
                g["unlock_at"] = self.t() + float(after)
                self.schedule(g["unlock_at"], self.lock_release(g, "unlock_at"))
        elif name in g["snapshots"]:
            err = f"snapshot name '{name}' already used"
        elif not g["snapshot_feature"]:
            err = "snapshot feature is not available"
        if err:
            return self.new_task(node, dtype, vmid, user, err, [err, f"TASK ERROR: {err}"], self.fail_seconds)
        g["lock"] = "snapshot"
        snap = {"name": name, "snaptime": int(self.now()), "description": params.get("description") or "",
                "snapstate": "prepare", "vmstate": 1 if vmstate else 0}
        if g.get("parent"):
            snap["parent"] = g["parent"]
        g["snapshots"][name] = snap
        self.created.append({"vmid": vmid, "name": name, "vmstate": 1 if vmstate else 0,
                             "description": snap["description"]})
        log = []
        fail = g.get("create_error")
        warns = g.get("freeze_warning")
        if gtype == "qemu" and g["status"] == "running" and warns:
            log.append(warns)
        log.append(f"snapshotting 'drive-scsi0' ({g.get('storage', 'local-zfs')}:vm-{vmid}-disk-0)")
        if fail:
            log += [fail, "snapshot create failed: starting cleanup", f"TASK ERROR: {fail}"]
            exitstatus = fail
        elif gtype == "qemu" and g["status"] == "running" and warns:
            log.append("TASK WARNINGS: 1")
            exitstatus = "WARNINGS: 1"
        else:
            log.append("TASK OK")
            exitstatus = "OK"

        def finish():
            g["lock"] = None
            if fail:
                g["snapshots"].pop(name, None)
            else:
                g["snapshots"][name].pop("snapstate", None)
                g["parent"] = name
        return self.new_task(node, dtype, vmid, user, exitstatus, log, self.task_seconds, finish)

    def delete_snapshot(self, node, gtype, vmid, name, params, user):
        errors = {k: "property is not defined in schema and the schema does not allow additional properties"
                  for k in params if k != "force"}
        if len(name) > 40:
            errors["snapname"] = "value may only be 40 characters long"
        elif not CONFIGID_RE.match(name):
            errors["snapname"] = f"invalid format - invalid configuration ID '{name}'"
        if errors:
            raise ApiError(400, "Parameter verification failed.", errors)
        self.check(vmid, "VM.Snapshot")
        g = self.guest_on(node, gtype, vmid)
        dtype = "qmdelsnapshot" if gtype == "qemu" else "vzdelsnapshot"
        kind = "VM" if gtype == "qemu" else "CT"
        err = None
        if name not in g["snapshots"]:
            err = f"snapshot '{name}' does not exist"
        elif name in g.get("replicated_snapshots", []):
            err = f"snapshot '{name}' needed by replication job '{vmid}-0' - run replication first"
        elif g["lock"]:
            err = f"{kind} is locked ({g['lock']})"
        if err:
            return self.new_task(node, dtype, vmid, user, err, [err, f"TASK ERROR: {err}"], self.fail_seconds)
        g["lock"] = "snapshot-delete"
        g["snapshots"][name]["snapstate"] = "delete"
        self.deleted.append({"vmid": vmid, "name": name})

        def finish():
            g["lock"] = None
            s = g["snapshots"].pop(name, None)
            parent = (s or {}).get("parent")
            if g.get("parent") == name:
                g["parent"] = parent
            for o in g["snapshots"].values():
                if o.get("parent") == name:
                    o["parent"] = parent
        return self.new_task(node, dtype, vmid, user, "OK",
                             [f"delete snapshot '{name}'", "TASK OK"], self.task_seconds, finish)

    def task_status(self, node, upid):
        if self.status_blips > 0:
            self.status_blips -= 1
            raise ApiError(503, "Service Unavailable")
        t = self.tasks.get(upid)
        if t is None or t["node"] != node:
            raise ApiError(500, f"no such task '{upid}'")
        running = self.running(t)
        out = {"upid": upid, "node": t["node"], "pid": t["pid"], "pstart": 0x1A2B00 + t["pid"],
               "starttime": t["starttime"], "type": t["type"], "id": str(t["vmid"]), "user": t["user"],
               "status": "running" if running else "stopped"}
        if not running:
            out["exitstatus"] = t["exitstatus"]
        return out

    def task_log(self, node, upid, query):
        t = self.tasks.get(upid)
        if t is None or t["node"] != node:
            raise ApiError(500, f"no such task '{upid}'")
        now = self.now()
        lines = [line for at, line in t["log"] if at <= now]
        start = int(query.get("start", 0))
        limit = int(query.get("limit", 50))
        sel = lines[start:start + limit]
        return [{"n": start + i + 1, "t": line} for i, line in enumerate(sel)], len(lines)


def make_handler(sim):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pve-api-daemon/3.0 (pve-simulator)"

        def log_message(self, fmt, *args):
            sys.stderr.write("pve-simulator: " + (fmt % args) + "\n")

        def answer(self, status, reason, body):
            raw = json.dumps(body).encode()
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Cache-Control", "max-age=0")
            self.end_headers()
            self.wfile.write(raw)

        def params(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n).decode() if n else ""
            ctype = self.headers.get("Content-Type", "")
            if raw and "json" in ctype:
                return {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in json.loads(raw).items()}
            return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))

        def handle_any(self, method):
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            parts = [urllib.parse.unquote(p) for p in parsed.path.split("/") if p]
            body = self.params() if method in ("POST", "PUT", "DELETE") else {}
            if method == "DELETE":
                body.update(query)
            try:
                with sim.lock:
                    sim.advance()
                    sim.requests.append({"method": method, "path": parsed.path})
                    try:
                        data = self.route(method, parts, query, body)
                    finally:
                        sim.write_stats()
                if isinstance(data, tuple):
                    self.answer(200, "OK", {"data": data[0], "total": data[1]})
                else:
                    self.answer(200, "OK", {"data": data})
            except ApiError as e:
                out = {"data": None, "message": e.message + "\n"}
                if e.errors:
                    out["errors"] = e.errors
                self.answer(e.status, e.message, out)

        def route(self, method, parts, query, body):
            if parts[:2] != ["api2", "json"]:
                raise ApiError(501, f"Unexpected content for method '{method}'")
            p = parts[2:]
            user = sim.authenticate(self.headers.get("Authorization"))
            if method == "GET" and p == ["nodes"]:
                return sim.get_nodes()
            if method == "GET" and p == ["cluster", "resources"]:
                return sim.cluster_resources(query)
            if len(p) >= 3 and p[0] == "nodes":
                node = p[1]
                if p[2] in ("qemu", "lxc"):
                    gtype = p[2]
                    if len(p) == 3 and method == "GET":
                        return sim.node_guests(node, gtype)
                    if len(p) >= 5 and p[4] == "snapshot":
                        try:
                            vmid = int(p[3])
                        except ValueError:
                            raise ApiError(400, "Parameter verification failed.",
                                           {"vmid": f"type check ('integer') failed - got '{p[3]}'"})
                        if len(p) == 5 and method == "GET":
                            return sim.list_snapshots(node, gtype, vmid)
                        if len(p) == 5 and method == "POST":
                            return sim.create_snapshot(node, gtype, vmid, body, user)
                        if len(p) == 6 and method == "DELETE":
                            return sim.delete_snapshot(node, gtype, vmid, p[5], body, user)
                if p[2] == "tasks" and len(p) == 5 and method == "GET":
                    if p[4] == "status":
                        return sim.task_status(node, p[3])
                    if p[4] == "log":
                        return sim.task_log(node, p[3], query)
            raise ApiError(501, f"Method '{method} /{'/'.join(p)}' not implemented")

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

        def do_DELETE(self):
            self.handle_any("DELETE")

        def do_PUT(self):
            self.handle_any("PUT")

    return Handler


def main():
    ap = argparse.ArgumentParser(description="Proxmox VE API simulator (a test double, not Proxmox VE)")
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    with open(a.scenario) as f:
        scenario = json.load(f)
    sim = Sim(scenario, a.stats)
    server = ThreadingHTTPServer((a.host, a.port), make_handler(sim))
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    # Handshake in the handler thread, so one slow client never stalls accept().
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    # Events also run between requests, so locks end and files appear on time.
    def tick():
        while True:
            time.sleep(0.05)
            with sim.lock:
                if sim.advance():
                    sim.write_stats()
    threading.Thread(target=tick, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
