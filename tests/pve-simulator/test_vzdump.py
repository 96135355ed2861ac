"""Checks of the Proxmox VE API simulator's backup endpoints (vzdump, storage
content, restore) against the behaviour of pve-manager, pve-storage,
qemu-server and pve-container, independently of cloudnx-agent.

    python3 -m unittest tests/pve-simulator/test_vzdump.py

Standard library only; needs the `openssl` CLI for a throwaway CA.
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "pve_simulator.py")
TOKEN = "cloudnx@pve!agent"
SECRET = "0e4c2a3f-1b2c-4d5e-8f90-a1b2c3d4e5f6"
PKI = None
UPID_RE = r"^UPID:pve1:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:%s:%s:cloudnx@pve!agent:$"


def setUpModule():
    global PKI
    PKI = tempfile.mkdtemp(prefix="pve-sim-test-pki.")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    p = lambda n: os.path.join(PKI, n)  # noqa: E731
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
        "-subj", "/CN=pve-sim-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", p("ca.key"), "-out", p("ca.pem"))
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=pve1",
        "-keyout", p("srv.key"), "-out", p("srv.csr"))
    with open(p("ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-days", "1", "-in", p("srv.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-CAcreateserial", "-extfile", p("ext.cnf"), "-out", p("srv.pem"))


def tearDownModule():
    shutil.rmtree(PKI, ignore_errors=True)


class Sim:
    """One simulator process with its own scenario and scratch directory."""

    def __init__(self, scenario):
        self.dir = tempfile.mkdtemp(prefix="pve-sim-test.")
        scenario = dict(scenario)
        scenario.setdefault("node", "pve1")
        scenario.setdefault("token", {"id": TOKEN, "secret": SECRET})
        self.scenario_path = os.path.join(self.dir, "scenario.json")
        with open(self.scenario_path, "w") as f:
            json.dump(scenario, f)
        self.stats_path = os.path.join(self.dir, "stats.json")
        self.err = open(os.path.join(self.dir, "sim.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, "--scenario", self.scenario_path, "--cert", os.path.join(PKI, "srv.pem"),
             "--key", os.path.join(PKI, "srv.key"), "--stats", self.stats_path],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            with open(os.path.join(self.dir, "sim.log")) as f:
                raise RuntimeError(f"simulator did not start: {line!r} {f.read()}")
        self.port = int(line.split()[1])
        self.ctx = ssl.create_default_context(cafile=os.path.join(PKI, "ca.pem"))

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dump(self, node="pve1", storage="local"):
        return os.path.join(self.dir, "pve-sim-storage", node, storage, "dump")

    def req(self, method, path, params=None, auth=True):
        """(status, reason, body) of one API call; params as a form body, or as
        the query for GET."""
        url = "/api2/json" + path
        body = None
        headers = {}
        if auth:
            headers["Authorization"] = f"PVEAPIToken={TOKEN}={SECRET}"
        if params:
            enc = urllib.parse.urlencode(params)
            if method == "GET":
                url += ("&" if "?" in url else "?") + enc
            else:
                body = enc
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
        try:
            c.request(method, url, body=body, headers=headers)
            r = c.getresponse()
            return r.status, r.reason, json.loads(r.read() or b"null")
        finally:
            c.close()

    def ok(self, method, path, params=None):
        st, reason, body = self.req(method, path, params)
        if st != 200:
            raise AssertionError(f"{method} {path} {params}: {st} {reason} {body}")
        return body["data"]

    def vzdump(self, vmid, **kw):
        params = {"vmid": str(vmid), "storage": "local", "mode": "snapshot", "compress": "zstd"}
        params.update({k.replace("_", "-"): str(v) for k, v in kw.items()})
        return self.ok("POST", "/nodes/pve1/vzdump", params)

    def status(self, upid, node="pve1"):
        return self.ok("GET", f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/status")

    def wait(self, upid, timeout=30, node="pve1"):
        deadline = time.time() + timeout
        while True:
            st = self.status(upid, node)
            if st["status"] == "stopped":
                return st["exitstatus"]
            if time.time() > deadline:
                raise AssertionError(f"task {upid} still running")
            time.sleep(0.05)

    def log(self, upid, node="pve1"):
        data = self.ok("GET", f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/log", {"limit": "1000"})
        return [line["t"] for line in data]

    def stats(self):
        with open(self.stats_path) as f:
            return json.load(f)

    def content(self, **query):
        return self.ok("GET", "/nodes/pve1/storage/local/content", query or None)

    @staticmethod
    def vol(volid):
        return urllib.parse.quote(volid, safe="")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


GUESTS = [
    {"vmid": 101, "type": "qemu", "name": "web"},
    {"vmid": 102, "type": "lxc", "name": "dns"},
    {"vmid": 103, "type": "qemu", "name": "off", "status": "stopped"},
    {"vmid": 200, "type": "qemu", "name": "elsewhere", "node": "pve2"},
]


class SimCase(unittest.TestCase):
    scenario = {"nodes": ["pve1", "pve2"], "vzdump_seconds": 0.3, "guests": GUESTS}

    def setUp(self):
        self.sim = Sim(self.scenario)
        self.addCleanup(self.sim.close)

    def backup(self, vmid, **kw):
        upid = self.sim.vzdump(vmid, **kw)
        self.assertEqual(self.sim.wait(upid), "OK", self.sim.log(upid))
        return upid

    def assertApiError(self, status, message, method, path, params=None, errors=None):
        st, reason, body = self.sim.req(method, path, params)
        self.assertEqual((st, reason), (status, message), body)
        self.assertEqual(body["message"], message + "\n")
        self.assertIsNone(body["data"])
        if errors is not None:
            self.assertEqual(body.get("errors"), errors)


class VzdumpTest(SimCase):
    scenario = {"nodes": ["pve1", "pve2"], "vzdump_seconds": 0.8, "backup_size_bytes": 3 * 1024 * 1024 + 17,
                "guests": GUESTS}

    def test_qemu_backup_writes_a_real_archive_only_at_the_end(self):
        t0 = time.time()
        upid = self.sim.vzdump(101, notes_template="{{guestname}} on {{node}} ({{vmid}})")
        self.assertRegex(upid, UPID_RE % ("vzdump", "101"))
        self.assertEqual(self.sim.status(upid)["status"], "running")
        time.sleep(0.45)
        names = os.listdir(self.sim.dump())
        self.assertTrue(any(n.endswith(".vma.dat") for n in names), names)
        self.assertTrue(any(n.endswith(".tmp") for n in names), names)
        self.assertFalse(any(n.endswith(".vma.zst") for n in names), "no archive before the end")
        self.assertEqual(self.sim.content(content="backup"), [], "a .dat is not listed")
        guests = {g["vmid"]: g for g in self.sim.ok("GET", "/nodes/pve1/qemu")}
        self.assertEqual(guests[101].get("lock"), "backup")
        self.assertEqual(self.sim.wait(upid), "OK")
        self.assertNotIn("lock", {g["vmid"]: g for g in self.sim.ok("GET", "/nodes/pve1/qemu")}[101])

        log = self.sim.log(upid)
        self.assertEqual(log[0], "INFO: starting new backup job: vzdump 101 --compress zstd --mode snapshot "
                                 "--node pve1 --notes-template '{{guestname}} on {{node}} ({{vmid}})' --storage local")
        files = sorted(n for n in os.listdir(self.sim.dump()) if n.endswith(".vma.zst"))
        self.assertEqual(len(files), 1, files)
        name = files[0]
        m = re.match(r"^vzdump-qemu-101-(\d{4})_(\d\d)_(\d\d)-(\d\d)_(\d\d)_(\d\d)\.vma\.zst$", name)
        self.assertTrue(m, name)
        stamp = time.mktime(tuple(int(x) for x in m.groups()) + (0, 0, -1))
        self.assertLessEqual(abs(stamp - t0), 1.5, "named after the backup's start, in local time, to the second")
        path = os.path.join(self.sim.dump(), name)
        for line in ["INFO: Starting Backup of VM 101 (qemu)", "INFO: status = running", "INFO: VM Name: web",
                     "INFO: backup mode: snapshot", f"INFO: creating vzdump archive '{path}'",
                     "INFO: archive file size: 3MB", "INFO: adding notes to backup",
                     "INFO: Backup job finished successfully", "TASK OK"]:
            self.assertIn(line, log)
        self.assertTrue(any(re.match(r"^INFO: Finished Backup of VM 101 \(00:00:0\d\)$", line) for line in log), log)
        self.assertEqual(log.index("INFO: Starting Backup of VM 101 (qemu)") < log.index(
            f"INFO: creating vzdump archive '{path}'"), True)
        self.assertEqual(log[-2:], ["INFO: Backup job finished successfully", "TASK OK"])
        self.assertTrue(os.path.exists(path[:-len(".vma.zst")] + ".log"), "vzdump copies its log beside the archive")
        self.assertFalse(any(n.endswith((".dat", ".tmp")) for n in os.listdir(self.sim.dump())))

        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 3 * 1024 * 1024 + 17)
        self.assertEqual(data[:4], b"\x28\xb5\x2f\xfd", "zstd magic")
        stats = self.sim.stats()
        arch = stats["archives"][0]
        self.assertEqual(arch["sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual((arch["volid"], arch["path"], arch["vmid"], arch["upid"], arch["size"]),
                         (f"local:backup/{name}", path, 101, upid, len(data)))
        self.assertEqual(stats["vzdump"], {"started": 1, "finished": 1, "ok": 1, "warnings": 0, "failed": 0})

        [entry] = self.sim.content(content="backup", vmid="101")
        self.assertEqual(entry, {"volid": f"local:backup/{name}", "format": "vma.zst", "content": "backup",
                                 "size": len(data), "ctime": int(stamp), "subtype": "qemu", "vmid": 101,
                                 "notes": "web on pve1 (101)"})
        info = self.sim.ok("GET", "/nodes/pve1/storage/local/content/" + Sim.vol(entry["volid"]))
        self.assertEqual({k: info[k] for k in ("path", "size", "format", "notes", "protected")},
                         {"path": path, "size": len(data), "format": "raw", "notes": "web on pve1 (101)",
                          "protected": 0})
        self.assertIsInstance(info["used"], int)
        # The volume name alone works too, the storage coming from the path.
        info2 = self.sim.ok("GET", "/nodes/pve1/storage/local/content/" + Sim.vol("backup/" + name))
        self.assertEqual(info2["path"], path)

        # A second backup of the same guest has other bytes.
        time.sleep(1.0)
        self.backup(101)
        second = [a for a in self.sim.stats()["archives"] if a["vmid"] == 101][1]
        self.assertNotEqual(second["sha256"], arch["sha256"])
        self.assertEqual(len(self.sim.content(vmid="101")), 2)

    def test_lxc_and_compression_names_and_formats(self):
        for vmid, compress, suffix, fmt, magic in [
                (102, "gzip", ".tar.gz", "tar.gz", b"\x1f\x8b"),
                (101, "0", ".vma", "vma", b"VMA\x00"),
                (103, "1", ".vma.lzo", "vma.lzo", b"\x89LZO"),
                (102, "lzo", ".tar.lzo", "tar.lzo", b"\x89LZO")]:
            upid = self.backup(vmid, compress=compress)
            entries = [e for e in self.sim.content(vmid=str(vmid)) if e["format"] == fmt]
            self.assertEqual(len(entries), 1, (vmid, compress, self.sim.content()))
            self.assertTrue(entries[0]["volid"].endswith(suffix))
            self.assertEqual(entries[0]["subtype"], "qemu" if vmid != 102 else "lxc")
            path = self.sim.ok("GET", "/nodes/pve1/storage/local/content/" + Sim.vol(entries[0]["volid"]))["path"]
            with open(path, "rb") as f:
                self.assertEqual(f.read(len(magic)), magic)
            log = self.sim.log(upid)
            if vmid == 102:
                self.assertIn("INFO: CT Name: dns", log)
                self.assertIn("INFO: create storage snapshot 'vzdump'", log)
            if vmid == 103:
                self.assertIn("INFO: status = stopped", log)
                self.assertIn("INFO: backup mode: stop", log, "a stopped guest is backed up in stop mode")
            time.sleep(1.0)  # archive names are to the second

    def test_vmid_lists_other_nodes_and_all(self):
        self.assertEqual(self.sim.vzdump(200), "OK", "guests on other nodes: a silent 'OK', no task")
        upid = self.sim.vzdump("101,200 102")
        self.assertRegex(upid, UPID_RE % ("vzdump", ""), "several local guests: no id in the UPID")
        self.assertEqual(self.sim.wait(upid), "OK")
        log = self.sim.log(upid)
        self.assertIn("INFO: skip external VMs: 200", log)
        self.assertLess(log.index("INFO: Starting Backup of VM 101 (qemu)"),
                        log.index("INFO: Starting Backup of VM 102 (lxc)"))
        time.sleep(1.0)
        st, _, body = self.sim.req("POST", "/nodes/pve1/vzdump", {"all": "1", "exclude": "101,103",
                                                                   "storage": "local"})
        self.assertEqual(st, 200)
        self.assertEqual(self.sim.wait(body["data"]), "OK")
        started = [line for line in self.sim.log(body["data"]) if line.startswith("INFO: Starting Backup")]
        self.assertEqual(started, ["INFO: Starting Backup of VM 102 (lxc)"])

    def test_protected_backup_cannot_be_deleted(self):
        self.backup(101, protected=1)
        [entry] = self.sim.content()
        self.assertEqual(entry["protected"], 1)
        upid = self.sim.ok("DELETE", "/nodes/pve1/storage/local/content/" + Sim.vol(entry["volid"]))
        name = entry["volid"].split(":", 1)[1]
        self.assertEqual(self.sim.wait(upid), f"cannot remove protected volume '{name}' on 'local'")
        self.assertEqual(len(self.sim.content()), 1)

    def test_stop_mode_stops_and_restarts_a_running_guest(self):
        upid = self.sim.vzdump(101, mode="stop")
        time.sleep(0.3)
        res = {g["vmid"]: g for g in self.sim.ok("GET", "/cluster/resources", {"type": "vm"})}
        self.assertEqual(res[101]["status"], "stopped")
        self.assertEqual(res[101]["lock"], "backup")
        self.assertEqual(self.sim.wait(upid), "OK")
        log = self.sim.log(upid)
        self.assertIn("INFO: stopping virtual guest", log)
        self.assertIn("INFO: restarting vm", log)
        res = {g["vmid"]: g for g in self.sim.ok("GET", "/cluster/resources", {"type": "vm"})}
        self.assertEqual(res[101]["status"], "running")


class VzdumpRefusalsTest(SimCase):
    def test_parameter_errors_are_400_with_errors(self):
        p = "/nodes/pve1/vzdump"
        failed = "Parameter verification failed."
        self.assertApiError(400, failed, "POST", p, {"storage": "local"}, {"vmid": "property is missing"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "compress": "xz"},
                            {"compress": "value 'xz' does not have a value in the enumeration '0, 1, gzip, lzo, zstd'"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "mode": "live"},
                            {"mode": "value 'live' does not have a value in the enumeration 'snapshot, suspend, stop'"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "12"},
                            {"vmid": "invalid format - value does not look like a valid VM ID"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "bogus": "1"},
                            {"bogus": "property is not defined in schema and the schema does not allow additional properties"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "lockwait": "soon"},
                            {"lockwait": "type check ('integer') failed - got 'soon'"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "notes-template": "x"},
                            {"storage": "missing property required by 'notes-template'"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "storage": "local", "notes-template": "{{name}}"},
                            {"notes-template": "found unknown: variable 'name' at char 4"})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "all": "1"},
                            {"all": "option conflicts with option 'vmid'"})
        # Root-only and CLI-only options (an API token is never root@pam).
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "dumpdir": "/tmp"},
                            {"dumpdir": "Only root may set this option."})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "tmpdir": "/tmp"},
                            {"tmpdir": "Only root may set this option."})
        self.assertApiError(400, failed, "POST", p, {"vmid": "101", "stdout": "1"},
                            {"stdout": "option is only allowed on the command line interface."})
        self.assertApiError(500, "hostname lookup 'pve9' failed - failed to get address info for: pve9: "
                                 "Name or service not known", "POST", "/nodes/pve9/vzdump", {"vmid": "101"})
        st, reason, _ = self.sim.req("POST", p, {"vmid": "101"}, auth=False)
        self.assertEqual((st, reason), (401, "No ticket"))
        self.assertEqual(self.sim.stats()["vzdump"]["started"], 0)

    def test_storage_must_exist_and_hold_backups(self):
        upid = self.sim.vzdump(101, storage="local-lvm")
        self.assertEqual(self.sim.wait(upid), "could not get storage information for 'local-lvm': "
                                              "can't use storage 'local-lvm' for backups - wrong content type")
        upid = self.sim.vzdump(101, storage="nas")
        self.assertEqual(self.sim.wait(upid), "could not activate storage 'nas': storage 'nas' does not exist "
                                              "could not get storage information for 'nas': storage 'nas' does not exist")
        self.assertEqual(os.listdir(self.sim.dump()), [])

    def test_orphan_vmid_is_a_job_error(self):
        upid = self.sim.vzdump(999)
        self.assertEqual(self.sim.wait(upid), "job errors")
        log = self.sim.log(upid)
        self.assertIn("ERROR: Backup of VM 999 failed - unable to find VM '999'", log)
        self.assertEqual(log[-2:], ["INFO: Backup job finished with errors", "TASK ERROR: job errors"])


class VzdumpPermissionsTest(SimCase):
    scenario = {"vzdump_seconds": 0.2, "guests": GUESTS[:3],
                "privileges": {"*": ["VM.Audit", "VM.Backup"], "102": ["VM.Audit"],
                               "/storage/local": ["Datastore.Audit"]}}

    def test_datastore_allocatespace_is_checked_before_the_task(self):
        self.assertApiError(403, "Permission check failed (/storage/local, Datastore.AllocateSpace)",
                            "POST", "/nodes/pve1/vzdump", {"vmid": "101", "storage": "local"})
        self.assertApiError(403, "Permission check failed (/, Sys.Modify)",
                            "POST", "/nodes/pve1/vzdump", {"vmid": "101", "storage": "local", "bwlimit": "1000"})


class StorageConfigTest(SimCase):
    scenario = {"vzdump_seconds": 0.2, "guests": GUESTS[:3],
                "privileges": {"*": ["VM.Audit", "VM.Backup"],
                               "/storage": ["Datastore.AllocateSpace", "Datastore.Audit"],
                               "/storage/local": ["Datastore.Allocate"]}}

    def test_read_storage_needs_datastore_allocate_and_shows_the_path(self):
        conf = self.sim.ok("GET", "/storage/local")
        self.assertEqual(conf["type"], "dir")
        self.assertEqual(os.path.join(conf["path"], "dump"), self.sim.dump())
        self.assertIn("backup", conf["content"].split(","))
        self.assertApiError(403, "Permission check failed (/storage/local-lvm, Datastore.Allocate)",
                            "GET", "/storage/local-lvm")


class VzdumpGuestPermissionTest(SimCase):
    scenario = {"vzdump_seconds": 0.2, "guests": GUESTS[:3],
                "privileges": {"*": ["VM.Audit", "VM.Backup"], "102": ["VM.Audit"],
                               "/storage": ["Datastore.AllocateSpace"]}}

    def test_vm_backup_is_checked_inside_the_task(self):
        upid = self.sim.vzdump(102)
        self.assertEqual(self.sim.wait(upid), "Permission check failed (/vms/102, VM.Backup)")
        self.assertEqual(self.sim.log(upid)[-1], "TASK ERROR: Permission check failed (/vms/102, VM.Backup)")
        upid = self.sim.vzdump(101)
        self.assertEqual(self.sim.wait(upid), "OK")
        # With `all`, guests without VM.Backup are skipped silently.
        time.sleep(1.0)
        upid = self.sim.ok("POST", "/nodes/pve1/vzdump", {"all": "1", "storage": "local"})
        self.assertEqual(self.sim.wait(upid), "OK")
        self.assertNotIn("INFO: Starting Backup of VM 102 (lxc)", self.sim.log(upid))


class VzdumpKnobsTest(SimCase):
    scenario = {"vzdump_seconds": 0.4, "task_seconds": 0.1, "guests": [
        {"vmid": 101, "type": "qemu", "name": "web", "backup_size_bytes": 12345},
        {"vmid": 102, "type": "lxc", "name": "dns", "backup_warnings": ["tar: ./var/log/x: file changed as we read it"]},
        {"vmid": 104, "type": "qemu", "name": "disk-broke", "backup_error": "job failed with err -5 - Input/output error"},
        {"vmid": 105, "type": "qemu", "name": "stale", "lock": "backup"},
        {"vmid": 106, "type": "qemu", "name": "snap", "lock": "snapshot", "lock_until_seconds": 1.5},
    ]}

    def test_size_per_guest(self):
        self.backup(101)
        self.assertEqual(self.sim.content(vmid="101")[0]["size"], 12345)

    def test_warnings(self):
        upid = self.sim.vzdump(102)
        self.assertEqual(self.sim.wait(upid), "WARNINGS: 1")
        log = self.sim.log(upid)
        self.assertIn("WARN: tar: ./var/log/x: file changed as we read it", log)
        self.assertEqual(log[-1], "TASK WARNINGS: 1")
        self.assertEqual(len(self.sim.content(vmid="102")), 1, "the archive is kept")
        self.assertEqual(self.sim.stats()["vzdump"]["warnings"], 1)

    def test_failure_leaves_no_archive(self):
        upid = self.sim.vzdump(104)
        time.sleep(0.15)
        self.assertTrue(any(n.endswith(".dat") for n in os.listdir(self.sim.dump())), "partial file while running")
        self.assertEqual(self.sim.wait(upid), "job errors")
        log = self.sim.log(upid)
        self.assertIn("ERROR: Backup of VM 104 failed - job failed with err -5 - Input/output error", log)
        self.assertEqual(log[-1], "TASK ERROR: job errors")
        names = os.listdir(self.sim.dump())
        self.assertEqual([n for n in names if not n.endswith(".log")], [], names)
        self.assertEqual(self.sim.content(), [])
        self.assertEqual(self.sim.stats()["guests"]["104"]["lock"], None, "unlocked after the failure")
        self.assertEqual(self.sim.stats()["vzdump"]["failed"], 1)

    def test_locked_guest_is_a_job_error(self):
        upid = self.sim.vzdump(105)
        self.assertEqual(self.sim.wait(upid), "job errors")
        self.assertIn("ERROR: Backup of VM 105 failed - VM is locked (backup)", self.sim.log(upid))
        upid = self.sim.vzdump(106)
        self.assertEqual(self.sim.wait(upid), "job errors")
        self.assertIn("ERROR: Backup of VM 106 failed - VM is locked (snapshot)", self.sim.log(upid))
        time.sleep(1.6)
        self.backup(106)  # the scenario lock ended

    def test_snapshot_during_backup_fails_on_the_lock(self):
        upid = self.sim.vzdump(101)
        snap = self.sim.ok("POST", "/nodes/pve1/qemu/101/snapshot", {"snapname": "during"})
        self.assertEqual(self.sim.wait(snap), "VM is locked (backup)")
        self.assertEqual(self.sim.wait(upid), "OK")
        snap = self.sim.ok("POST", "/nodes/pve1/qemu/101/snapshot", {"snapname": "after"})
        self.assertEqual(self.sim.wait(snap), "OK")

    def test_second_vzdump_waits_for_the_node_lock(self):
        first = self.sim.vzdump(101)
        second = self.sim.vzdump(101, lockwait=1)
        third = self.sim.vzdump(102, lockwait=0)
        self.assertEqual(self.sim.wait(third), "unexpected status")
        self.assertEqual(self.sim.log(third), ["ERROR: can't acquire lock '/var/run/vzdump.lock' (wait = 0)"])
        self.assertEqual(self.sim.log(second)[0], "INFO: trying to get global lock - waiting...")
        self.assertEqual(self.sim.wait(first), "OK")
        self.assertEqual(self.sim.wait(second), "OK")
        self.assertEqual(self.sim.log(second)[1], "INFO: got global lock")
        tasks = {t["upid"]: t for t in self.sim.stats()["tasks"]}
        self.assertGreaterEqual(tasks[second]["end"] - tasks[first]["end"], 0.39, "ran after the first")

    def test_two_backups_in_one_second_share_a_name(self):
        # What vzdump does: the second archive replaces the first (rename()).
        while time.time() % 1 > 0.05:
            time.sleep(0.01)
        first = self.sim.vzdump(101, lockwait=1)
        second = self.sim.vzdump(101, lockwait=1)
        self.sim.wait(first)
        self.sim.wait(second)
        arch = [a for a in self.sim.stats()["archives"] if a["vmid"] == 101]
        self.assertEqual(len(arch), 2)
        if arch[0]["path"] != arch[1]["path"]:
            self.skipTest("the two backups did not start within one second")
        self.assertTrue(arch[1]["replaced"])
        self.assertEqual(arch[0]["replaced_by"], second)
        [entry] = self.sim.content(vmid="101")
        self.assertEqual(sha256(arch[1]["path"]), arch[1]["sha256"])


class RunningBackupAtStartTest(SimCase):
    scenario = {"vzdump_seconds": 0.2, "guests": [
        {"vmid": 101, "type": "qemu", "name": "web", "backup_running_seconds": 1.2},
        {"vmid": 102, "type": "lxc", "name": "dns"}]}

    def test_a_scheduled_backup_holds_guest_and_node_lock(self):
        tasks = self.sim.stats()["tasks"]
        self.assertEqual([(t["type"], t["vmid"], t["user"]) for t in tasks], [("vzdump", 101, "root@pam")])
        snap = self.sim.ok("POST", "/nodes/pve1/qemu/101/snapshot", {"snapname": "xx"})
        self.assertEqual(self.sim.wait(snap), "VM is locked (backup)")
        mine = self.sim.vzdump(102)
        time.sleep(0.2)
        self.assertEqual(self.sim.status(mine)["status"], "running")
        self.assertEqual(self.sim.log(mine), ["INFO: trying to get global lock - waiting..."])
        self.assertEqual(self.sim.wait(mine), "OK")
        self.assertEqual(self.sim.wait(tasks[0]["upid"]), "OK")
        self.assertEqual(sorted(e["vmid"] for e in self.sim.content()), [101, 102],
                         "the scheduled job's archive is there too")


class ContentTest(SimCase):
    scenario = {"vzdump_seconds": 0.2, "guests": GUESTS[:3], "storages": {
        "local": {"type": "dir", "content": ["backup", "iso"]},
        "iso": {"type": "dir", "content": ["iso"]},
        "local-lvm": {"type": "lvmthin", "content": ["images", "rootdir"]}},
        "privileges": {"*": ["VM.Audit", "VM.Backup"], "103": ["VM.Audit"],
                       "/storage/local": ["Datastore.AllocateSpace"], "/storage/iso": ["Datastore.Audit"]}}

    def test_list_filters_and_permissions(self):
        self.backup(101)
        self.backup(102)
        # An archive of 103 (made by someone else): hidden without VM.Backup on 103.
        shutil.copy(self.sim.stats()["archives"][0]["path"],
                    os.path.join(self.sim.dump(), "vzdump-qemu-103-2020_01_01-00_00_00.vma.zst"))
        vols = [e["volid"] for e in self.sim.content()]
        self.assertEqual(len(vols), 2, "103's archive is hidden without VM.Backup on it")
        self.assertEqual(vols, sorted(vols, key=str.lower))
        self.assertEqual([e["vmid"] for e in self.sim.content(vmid="102")], [102])
        self.assertEqual(self.sim.content(content="iso"), [])
        self.assertEqual(self.sim.ok("GET", "/nodes/pve1/storage/iso/content", {"content": "backup"}), [])
        self.assertApiError(400, "Parameter verification failed.", "GET", "/nodes/pve1/storage/local/content",
                            {"content": "archives"}, {"content": "invalid format - invalid content type 'archives'"})
        # The permission check comes first (no ACL on /storage/nope here).
        self.assertApiError(403, "Permission check failed (/storage/nope, Datastore.Audit|Datastore.AllocateSpace)",
                            "GET", "/nodes/pve1/storage/nope/content")
        storages = self.sim.ok("GET", "/nodes/pve1/storage", {"content": "backup"})
        self.assertEqual([(s["storage"], s["content"]) for s in storages], [("local", "backup,iso")])

    def test_info_errors(self):
        self.assertApiError(500, "volume_size_info on 'local:backup/vzdump-qemu-101-2020_01_01-00_00_00.vma.zst' "
                                 "failed - no format", "GET", "/nodes/pve1/storage/local/content/"
                            + Sim.vol("local:backup/vzdump-qemu-101-2020_01_01-00_00_00.vma.zst"))
        self.assertApiError(403, "Permission check failed (/vms/103, VM.Backup)", "GET",
                            "/nodes/pve1/storage/local/content/"
                            + Sim.vol("local:backup/vzdump-qemu-103-2020_01_01-00_00_00.vma.zst"))
        self.assertApiError(400, "Parameter verification failed.", "GET", "/nodes/pve1/storage/local/content/"
                            + Sim.vol("iso:backup/vzdump-qemu-101-2020_01_01-00_00_00.vma"),
                            errors={"volume": "storage ID mismatch (iso != local)"})
        self.assertApiError(500, "unable to parse directory volume name 'backup/notes.txt'", "GET",
                            "/nodes/pve1/storage/local/content/" + Sim.vol("local:backup/notes.txt"))

    def test_delete_is_a_task_that_removes_the_files(self):
        self.backup(101, notes_template="{{guestname}}")
        [entry] = self.sim.content()
        path = self.sim.ok("GET", "/nodes/pve1/storage/local/content/" + Sim.vol(entry["volid"]))["path"]
        self.assertTrue(os.path.exists(path + ".notes"))
        upid = self.sim.ok("DELETE", "/nodes/pve1/storage/local/content/" + Sim.vol(entry["volid"]))
        self.assertRegex(upid, UPID_RE % ("imgdel", "101@local"))
        self.assertEqual(self.sim.wait(upid), "OK")
        self.assertEqual(self.sim.log(upid), [f"Removed volume '{entry['volid']}'", "TASK OK"])
        self.assertEqual(os.listdir(self.sim.dump()), [], "archive, .log and .notes are gone")
        self.assertEqual(self.sim.content(), [])
        # Gone already: the task still ends OK, saying so.
        upid = self.sim.ok("DELETE", "/nodes/pve1/storage/local/content/" + Sim.vol(entry["volid"]))
        self.assertEqual(self.sim.wait(upid), "OK")
        self.assertEqual(self.sim.log(upid)[0], f"disk image '{path}' does not exist")
        # `delay`: the answer waits for the task and is null when it went well.
        self.assertIsNone(self.sim.ok("DELETE", "/nodes/pve1/storage/local/content/"
                                      + Sim.vol(entry["volid"]), {"delay": "5"}))
        deleted = self.sim.stats()["archives_deleted"]
        self.assertEqual([(d["volid"], d["existed"]) for d in deleted],
                         [(entry["volid"], True), (entry["volid"], False), (entry["volid"], False)])
        self.assertEqual(self.sim.stats()["archives"][0]["deleted_by"], deleted[0]["upid"])

    def test_delete_permissions(self):
        self.assertApiError(403, "Permission check failed (/vms/103, VM.Backup)", "DELETE",
                            "/nodes/pve1/storage/local/content/"
                            + Sim.vol("local:backup/vzdump-qemu-103-2020_01_01-00_00_00.vma.zst"))
        self.assertApiError(403, "Permission check failed (/storage/iso, Datastore.AllocateSpace)", "DELETE",
                            "/nodes/pve1/storage/iso/content/"
                            + Sim.vol("iso:backup/vzdump-qemu-101-2020_01_01-00_00_00.vma.zst"))
        # Unencoded "/" in the volume is another path, not this endpoint.
        st, _, _ = self.sim.req("DELETE", "/nodes/pve1/storage/local/content/local:backup/"
                                          "vzdump-qemu-101-2020_01_01-00_00_00.vma.zst")
        self.assertEqual(st, 501)


class RestoreTest(SimCase):
    scenario = {"nodes": ["pve1", "pve2"], "vzdump_seconds": 0.2, "restore_seconds": 0.4,
                "backup_size_bytes": 100000, "guests": GUESTS}

    def archive(self, vmid):
        self.backup(vmid)
        entry = self.sim.content(vmid=str(vmid))[-1]
        path = self.sim.ok("GET", "/nodes/pve1/storage/local/content/" + Sim.vol(entry["volid"]))["path"]
        return entry["volid"], path

    def test_qemu_restore_to_a_new_vmid(self):
        volid, path = self.archive(101)
        self.assertApiError(500, "unable to restore VM 101 - VM 101 already exists on node 'pve1'",
                            "POST", "/nodes/pve1/qemu", {"vmid": "101", "archive": volid, "storage": "local-lvm"})
        self.assertApiError(500, "unable to restore VM 200 - VM 200 already exists on node 'pve2'",
                            "POST", "/nodes/pve1/qemu", {"vmid": "200", "archive": volid})
        self.assertApiError(500, "unable to restore VM 102 - CT 102 already exists on node 'pve1'",
                            "POST", "/nodes/pve1/qemu", {"vmid": "102", "archive": volid})
        upid = self.sim.ok("POST", "/nodes/pve1/qemu", {"vmid": "301", "archive": volid, "storage": "local-lvm",
                                                         "unique": "1"})
        self.assertRegex(upid, UPID_RE % ("qmrestore", "301"))
        during = {g["vmid"]: g for g in self.sim.ok("GET", "/nodes/pve1/qemu")}
        self.assertEqual(during[301].get("lock"), "create")
        self.assertEqual(self.sim.wait(upid), "OK")
        log = self.sim.log(upid)
        self.assertEqual(log[0], f"restore vma archive: zstd -q -d -c {path} | vma extract -v -r "
                                 f"{log[0].split(' -r ')[1].split('.fifo')[0]}.fifo - "
                                 f"{log[0].split(' -r ')[1].split('.fifo')[0]}")
        self.assertIn("new volume ID is 'local-lvm:vm-301-disk-0'", log)
        res = {g["vmid"]: g for g in self.sim.ok("GET", "/cluster/resources", {"type": "vm"})}
        self.assertEqual((res[301]["name"], res[301]["node"], res[301]["status"], res[301].get("lock")),
                         ("web", "pve1", "stopped", None))
        [r] = self.sim.stats()["restores"]
        self.assertEqual((r["vmid"], r["archive"], r["path"], r["size"], r["sha256"], r["exitstatus"]),
                         (301, volid, path, 100000, sha256(path), "OK"))
        self.assertEqual(r["source"]["volid"], volid)
        self.assertEqual(r["sha256"], self.sim.stats()["archives"][0]["sha256"], "the very bytes vzdump wrote")

    def test_qemu_restore_failures(self):
        volid, path = self.archive(101)
        self.assertApiError(500, "Only root can pass arbitrary filesystem paths. at "
                                 "/usr/share/perl5/PVE/Storage.pm line 651.",
                            "POST", "/nodes/pve1/qemu", {"vmid": "302", "archive": path})
        self.assertApiError(500, "pipe requires cli environment", "POST", "/nodes/pve1/qemu",
                            {"vmid": "302", "archive": "-"})
        self.assertApiError(400, "Parameter verification failed.", "POST", "/nodes/pve1/qemu",
                            {"vmid": "302", "force": "1"}, {"archive": "missing property required by 'force'"})
        # Storage without disk images: the task fails; the VM config stays ("NOT cleaned up").
        upid = self.sim.ok("POST", "/nodes/pve1/qemu", {"vmid": "302", "archive": volid, "storage": "local"})
        self.assertEqual(self.sim.wait(upid), "Content type 'images' is not available on storage 'local'")
        self.assertIn("error before or during data restore, some or all disks were not completely restored. "
                      "VM 302 state is NOT cleaned up.", self.sim.log(upid))
        self.assertEqual(self.sim.stats()["guests"]["302"]["lock"], None)
        # Bytes that are not an archive vzdump wrote fail like a corrupt VMA.
        bad = os.path.join(os.path.dirname(path), "vzdump-qemu-101-2020_01_01-00_00_00.vma.zst")
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[5000] ^= 1
        with open(bad, "wb") as f:
            f.write(data)
        upid = self.sim.ok("POST", "/nodes/pve1/qemu", {"vmid": "303", "archive": "local:backup/" + os.path.basename(bad)})
        status = self.sim.wait(upid)
        self.assertRegex(status, r"^command 'set -o pipefail && zstd -q -d -c .* failed: exit code 133$")
        self.assertIn("vma: restore failed - wrong vma extent header chksum", self.sim.log(upid))
        self.assertEqual(self.sim.stats()["restores"][-1]["sha256"], hashlib.sha256(data).hexdigest())
        # A missing archive file.
        upid = self.sim.ok("POST", "/nodes/pve1/qemu",
                           {"vmid": "304", "archive": "local:backup/vzdump-qemu-101-2019_01_01-00_00_00.vma.zst"})
        self.assertRegex(self.sim.wait(upid), r"^command 'set -o pipefail && zstd .*' failed: exit code 1$")

    def test_force_restore_over_a_stopped_vm(self):
        volid, _ = self.archive(101)
        upid = self.sim.ok("POST", "/nodes/pve1/qemu", {"vmid": "103", "archive": volid, "force": "1",
                                                         "storage": "local-lvm"})
        self.assertEqual(self.sim.wait(upid), "OK")
        self.assertEqual(self.sim.stats()["guests"]["103"]["name"], "web")
        upid = self.sim.ok("POST", "/nodes/pve1/qemu", {"vmid": "101", "archive": volid, "force": "1"})
        self.assertEqual(self.sim.wait(upid), "unable to restore VM 101 - vm is running")

    def test_lxc_restore(self):
        volid, path = self.archive(102)
        params = {"vmid": "102", "ostemplate": volid, "restore": "1", "storage": "local-lvm"}
        self.assertApiError(500, "CT 102 already exists on node 'pve1'", "POST", "/nodes/pve1/lxc", params)
        self.assertApiError(500, "VM 101 already exists on node 'pve1'", "POST", "/nodes/pve1/lxc",
                            dict(params, vmid="101"))
        self.assertApiError(400, "Parameter verification failed.", "POST", "/nodes/pve1/lxc",
                            {"vmid": "402", "ostemplate": volid, "restore": "1"},
                            {"storage": "storage 'local' does not support container directories"})
        upid = self.sim.ok("POST", "/nodes/pve1/lxc", dict(params, vmid="402"))
        self.assertRegex(upid, UPID_RE % ("vzrestore", "402"))
        self.assertEqual(self.sim.wait(upid), "OK")
        log = self.sim.log(upid)
        self.assertEqual(log[0], f"recovering backed-up configuration from '{volid}'")
        self.assertIn(f"extracting archive '{path}'", log)
        self.assertEqual({g["vmid"]: g["name"] for g in self.sim.ok("GET", "/nodes/pve1/lxc")}[402], "dns")
        self.assertEqual(self.sim.stats()["restores"][0]["sha256"], sha256(path))
        # A VM archive is no container backup: the new CT's config is removed again.
        qvol, _ = self.archive(101)
        upid = self.sim.ok("POST", "/nodes/pve1/lxc", dict(params, vmid="403", ostemplate=qvol))
        self.assertEqual(self.sim.wait(upid), "unable to restore CT 403 - ERROR: archive contains no configuration file")
        self.assertNotIn("403", self.sim.stats()["guests"])


class RestorePermissionsTest(SimCase):
    scenario = {"vzdump_seconds": 0.2, "guests": GUESTS[:3],
                "privileges": {"*": ["VM.Audit", "VM.Backup"], "/storage": ["Datastore.AllocateSpace"]}}

    def test_new_vmid_needs_vm_allocate_but_force_needs_only_vm_backup(self):
        self.backup(101)
        volid = self.sim.content(vmid="101")[0]["volid"]
        self.assertApiError(403, "Permission check failed", "POST", "/nodes/pve1/qemu",
                            {"vmid": "305", "archive": volid})
        upid = self.sim.ok("POST", "/nodes/pve1/qemu", {"vmid": "103", "archive": volid, "force": "1",
                                                         "storage": "local-lvm"})
        self.assertEqual(self.sim.wait(upid), "OK")


class ExampleScenarioTest(unittest.TestCase):
    """tests/pve-simulator/vm-backup-scenario.json does what its names say."""

    def test_each_guest_gets_its_documented_outcome(self):
        with open(os.path.join(HERE, "vm-backup-scenario.json")) as f:
            scenario = json.load(f)
        scenario["token"] = {"id": TOKEN, "secret": SECRET}
        sim = Sim(scenario)
        self.addCleanup(sim.close)
        scheduled = sim.stats()["tasks"][0]["upid"]
        upids = {vmid: sim.vzdump(vmid) for vmid in (100, 101, 103, 104, 105, 106)}
        self.assertEqual(sim.vzdump(200), "OK")
        want = {100: "OK", 101: "OK", 103: "WARNINGS: 1", 104: "job errors", 105: "job errors", 106: "OK"}
        self.assertEqual({vmid: sim.wait(u) for vmid, u in upids.items()}, want)
        self.assertEqual(sim.wait(scheduled), "OK")
        self.assertIn("ERROR: Backup of VM 105 failed - CT is locked (backup)", sim.log(upids[105]))
        self.assertIn("INFO: trying to get global lock - waiting...", sim.log(upids[100]),
                      "queued behind 102's scheduled backup")
        sizes = {e["vmid"]: e["size"] for e in sim.content(content="backup")}
        self.assertEqual(sizes, {100: 3145728, 101: 1048576, 102: 1048576, 103: 1048576, 106: 1048576})


class SnapshotsStillWorkTest(SimCase):
    def test_snapshot_create_and_delete(self):
        upid = self.sim.ok("POST", "/nodes/pve1/qemu/101/snapshot", {"snapname": "before"})
        self.assertRegex(upid, UPID_RE % ("qmsnapshot", "101"))
        self.assertEqual(self.sim.status(upid)["status"], "running")
        self.assertEqual(self.sim.wait(upid), "OK")
        names = [s["name"] for s in self.sim.ok("GET", "/nodes/pve1/qemu/101/snapshot")]
        self.assertEqual(names, ["before", "current"])
        upid = self.sim.ok("DELETE", "/nodes/pve1/qemu/101/snapshot/before")
        self.assertEqual(self.sim.wait(upid), "OK")
        self.assertEqual(self.sim.stats()["snapshots"]["101"], [])


if __name__ == "__main__":
    unittest.main()
