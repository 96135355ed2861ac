#!/usr/bin/env python3
"""A Proxmox VE API test double (a SIMULATOR, not Proxmox VE).

Answers the /api2/json endpoints cloudnx-agent's `snapshot` and `vm-backup`
jobs use, with the shapes, error texts, task UPIDs, task logs and locks of
the upstream code (see SOURCES below):

  GET    /nodes                                  node index
  GET    /cluster/resources?type=vm              guests (id, type, vmid, node, name, status, template, lock)
  GET    /nodes/{node}/{qemu|lxc}                guests of one node (vmid, name, status, template, lock)
  GET    /nodes/{node}/{type}/{vmid}/snapshot    snapshot list, ending with the `current` entry
  POST   /nodes/{node}/{type}/{vmid}/snapshot    snapname, vmstate (boolean), description -> UPID
  DELETE /nodes/{node}/{type}/{vmid}/snapshot/{snapname}                           -> UPID
  POST   /nodes/{node}/vzdump                    vmid (a list) | all [exclude], storage, mode,
                                                 compress, notes-template, protected, lockwait,
                                                 remove, … -> UPID of a `vzdump` task
  GET    /nodes/{node}/storage                   storages on the node: storage, type, content, …
  GET    /storage/{storage}                      storage.cfg section: type, path, content, …
                                                 (Datastore.Allocate on /storage/{storage})
  GET    /nodes/{node}/storage/{storage}/content [content, vmid] -> volid, format, size, ctime,
                                                 content, subtype, vmid, notes, protected
  GET    /nodes/{node}/storage/{storage}/content/{volume}  path, size, used, format, notes, protected
  DELETE /nodes/{node}/storage/{storage}/content/{volume}  [delay] -> UPID of an `imgdel` task
  POST   /nodes/{node}/qemu                      vmid, archive, storage, unique, force, start
                                                 -> UPID of a `qmrestore` task
  POST   /nodes/{node}/lxc                       vmid, ostemplate, restore=1, storage, unique,
                                                 force, start -> UPID of a `vzrestore` task
  GET    /nodes/{node}/tasks/{upid}/status       status running|stopped, exitstatus
  GET    /nodes/{node}/tasks/{upid}/log          [{n, t}], total (the lines so far while running)

Every answer is a JSON object with `data`; errors carry the message in the
HTTP reason phrase and in `message`, parameter errors in `errors` (HTTP 400,
"Parameter verification failed.", the texts of PVE::JSONSchema). Failures
inside an API call are HTTP 500 with the upstream `die` text; a call or a
parameter this simulator does not model answers 501 "pve-simulator: …".
Authentication is `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`
(401 otherwise); a token is never `root@pam`, so root-only options are
always refused. Privileges come from the scenario's ACL (403 "Permission
check failed (PATH, PRIV)", or "(PATH, A|B)" for any-of checks); guests
without VM.Audit and backups the token may not see are silently left out of
lists. Tasks end with the last log line `TASK OK`, `TASK WARNINGS: n` or
`TASK ERROR: msg` and that exitstatus (`OK`, `WARNINGS: n`, `msg`); a vzdump
worker that exits without one reports "unexpected status".

Snapshots (qemu-server, pve-container, PVE::AbstractConfig): create and
delete run as tasks: a lock ("VM is locked (backup)"), "snapshot name 'x'
already used", "snapshot feature is not available" and "needed by
replication" come back as HTTP 200 + a UPID whose task fails that way.

Backups (pve-manager PVE/API2/VZDump.pm, PVE/VZDump.pm; pve-guest-common
PVE/VZDump/Common.pm, Plugin.pm; qemu-server / pve-container PVE/VZDump/*):
  * before the task: parameter schema (compress 0|1|gzip|lzo|zstd, mode
    snapshot|suspend|stop, vmid list, notes-template syntax and `requires
    storage`, …); `stdout` -> 400 "option is only allowed on the command line
    interface."; tmpdir/dumpdir/script/job-id -> 400 "Only root may set this
    option."; bwlimit/ionice -> Sys.Modify on /; Datastore.AllocateSpace on
    /storage/{storage} (storage defaults to `local`); guests that are all on
    other nodes -> data "OK" and no task.
  * in the task (type `vzdump`, id = the VMID when one local guest): a storage
    that does not exist or lacks content `backup` fails it ("could not get
    storage information for 'S': can't use storage 'S' for backups - wrong
    content type"); then vzdump's node-wide lock (/var/run/vzdump.lock):
    tasks on a node run one after another ("INFO: trying to get global lock
    - waiting...", "INFO: got global lock"; lockwait=0 on a busy node:
    "ERROR: can't acquire lock ... (wait = 0)", status "unexpected status");
    VM.Backup on each guest (missing: the task fails "Permission check
    failed (/vms/N, VM.Backup)"; with `all` the guest is skipped).
  * per guest, the log lines vzdump writes ("INFO: starting new backup job:
    vzdump 101 --compress zstd …", "INFO: Starting Backup of VM 101 (qemu)",
    "INFO: status = running", "INFO: backup mode: snapshot", "INFO: creating
    vzdump archive '<path>'", progress, "INFO: archive file size: 3MB",
    "INFO: Finished Backup of VM 101 (00:00:02)", "INFO: Backup job finished
    successfully"); the guest holds lock `backup` meanwhile (a snapshot then
    fails "VM is locked (backup)"); a guest already locked fails with
    "ERROR: Backup of VM 101 failed - VM is locked (X)" and the job ends
    "job errors"; an unknown VMID: "unable to find VM '999'"; a stopped
    guest or template is backed up in mode stop; mode stop stops and
    restarts a running guest (status `stopped` meanwhile).
  * the archive is a real file {storage path}/dump/vzdump-{qemu|lxc}-{vmid}-
    {YYYY_MM_DD-HH_MM_SS}.{vma|tar}[.lzo|.gz|.zst] (the task's start, local
    time, to the second), written as `….dat` beside a `….tmp` directory and
    renamed at the end; a second backup of the guest within the same second
    gets the same name and replaces the first (rename(), as vzdump does).
    Its bytes: the format's magic, then a pseudo-random stream seeded by
    (archive_seed, vmid, the guest's backup number): deterministic, and
    different for every backup. `….log` (the guest's log) and, with
    notes-template / protected, `….notes` / `….protected` are written too.
    A failing guest leaves no archive (the .dat is removed), only its .log.

Storage content (pve-storage PVE/API2/Storage/Content.pm, PVE/Storage.pm,
Plugin.pm, DirPlugin.pm): only `backup` content of directory storages is
listed (from the dump directory, so files put there by a client show up
too), sorted by volid, filtered by check_volume_access (Datastore.Allocate,
or Datastore.AllocateSpace + VM.Backup on the owner); the list needs
Datastore.Audit or Datastore.AllocateSpace. `{volume}` is a URL-encoded volid
("local%3Abackup%2Fvzdump-…") or a volume name ("backup%2Fvzdump-…"); a
storage mismatch is 400, an unparsable name 500 "unable to parse directory
volume name …", a missing file 500 "volume_size_info on 'V' failed - no
format"; info's `format` is "raw" (qemu-img info of an archive). DELETE
checks Datastore.AllocateSpace + VM.Backup on the owner (else
Datastore.Allocate) and answers the UPID of an `imgdel` task (id
"{vmid}@{storage}") that removes the archive with its .log and .notes
("Removed volume 'V'"; already gone: "disk image 'P' does not exist" and
still OK; protected: "cannot remove protected volume 'backup/F' on 'S'").
`delay` (1-30 s) waits for it and answers null, or its error as HTTP 500.

Restore (qemu-server PVE/API2/Qemu.pm create_vm, PVE/QemuServer.pm
restore_vma_archive; pve-container PVE/API2/LXC.pm create_vm, LXC/Create.pm;
pve-cluster check_vmid_unused): the archive must be a volid (a path: 500
"Only root can pass arbitrary filesystem paths. …"; "-": "pipe requires cli
environment") the token may read; VM.Allocate on /vms/{vmid}, or with
`force` over an existing guest of this node just VM.Backup, else 403
"Permission check failed". An existing VMID: qemu 500 "unable to restore VM
101 - VM 101 already exists on node 'pve1'" (or "… - CT 101 …"), lxc 500
"CT 101 already exists on node 'pve1'". lxc `storage` (default local) needs
content rootdir (400 "storage 'local' does not support container
directories"), qemu's target storage content images (the task fails
"Content type 'images' is not available on storage 'local'"). The guest
exists at once, locked `create`; the task (`qmrestore` / `vzrestore`) reads
the whole archive and records its size and SHA-256 in the statistics. Bytes
this simulator never wrote as a backup of that guest type fail like a
corrupt archive (qemu: "command 'set -o pipefail && zstd … | vma extract …'
failed: exit code 133"; lxc: "unable to restore CT N - ERROR: archive
contains no configuration file"); a missing file fails too. On success the
guest takes the backed-up name and template flag, stopped (running with
start=1). A failed qmrestore leaves the config behind unlocked ("VM N state
is NOT cleaned up."); a failed vzrestore of a new CT removes it.

NOT modelled (501, or as noted): vzdump pool/stop/fleecing/performance/
exclude-path, pruning (prune-backups other than keep-all=1; `remove` is
accepted and ignored), PBS and other backup providers, stdout/dumpdir (always
refused: no root@pam); the timeout of lockwait is real minutes; storage
content other than `backup` (lists are empty), allocating or deleting disk
images, disk usage beyond the file system's numbers; restoring from a pipe,
pool, ha-managed, rootfs/mp overrides, most VM/CT config keys (only name,
description, memory, cores, sockets, onboot, tags, netN, hostname, swap,
unprivileged are accepted), restore over a guest of another node or type
(refused as "already exists"), live-restore (fails as upstream for non-PBS
archives); task stop (DELETE …/tasks/{upid}), the task list, cluster
notifications. Archives are generated under the simulator lock (about
150 MB/s): keep them to tens of MiB. Message texts with a Perl source line
("… line 651.") are as of the commits below.

SOURCES (git.proxmox.com, as mirrored at github.com/proxmox, read at):
  pve-manager 14a22df3 (2026-08-21)   PVE/API2/VZDump.pm, PVE/VZDump.pm, PVE/API2/Backup.pm,
                                      PVE/API2Tools.pm, PVE/API2/Cluster.pm (resources: lock)
  pve-guest-common 4a8f6cb (2025-07)  src/PVE/VZDump/Common.pm, VZDump/Plugin.pm, AbstractConfig.pm
  qemu-server e6352be6 (2026-08-17)   src/PVE/API2/Qemu.pm, QemuServer.pm, VZDump/QemuServer.pm
  pve-container 94f5585 (2026-06-16)  src/PVE/API2/LXC.pm, LXC/Create.pm, VZDump/LXC.pm
  pve-storage 0c56bad (2026-07-24)    src/PVE/API2/Storage/Content.pm, Storage.pm, Storage/Plugin.pm,
                                      Storage/DirPlugin.pm
  pve-common f665029 (2026-08-04)     src/PVE/JSONSchema.pm, RESTEnvironment.pm, UPID.pm,
                                      Exception.pm, ParseUtils.pm
  pve-access-control 5ccd07d          src/PVE/RPCEnvironment.pm (check, check_any)
  pve-cluster 7091d92                 src/PVE/Cluster.pm (check_vmid_unused)
  and the API viewer (pve.proxmox.com/pve-docs/api-viewer, generated from
  those schemas) and vzdump(1).

Usage: pve_simulator.py --scenario FILE --cert PEM --key PEM --stats FILE [--port 0]
Prints "LISTENING <port>" on stdout once it accepts connections. The
statistics file (JSON, rewritten atomically after every change) records:
  max_in_flight, in_flight, tasks [{upid, node, type, vmid, user, exitstatus,
  start, end}], requests, created/deleted/snapshots (snapshot calls),
  vzdump {started, finished, ok, warnings, failed},
  archives [{volid, path, node, storage, vmid, type, name, upid, backup_number,
            size, sha256, written_at, replaced, replaced_by?, deleted_by?}],
  archives_deleted [{volid, path, upid, existed, result}],
  restores [{upid, type, vmid, node, archive, path, storage, size, sha256,
            source {volid, vmid, upid} | null, exitstatus}],
  guests {vmid: {node, type, name, status, lock, template}}.

Scenario (JSON):
  node, nodes[]                 the node the agent asks about; all cluster nodes
  token {id, secret}            the one API token that authenticates
  privileges {key: [..]}        ACL: key "*" or a VMID for /vms/{vmid}; or a path
                                ("/storage", "/storage/local", "/", "/vms") that
                                also covers paths below it. Default: "*" VM.Audit,
                                VM.Snapshot, VM.Backup, VM.Allocate; "/storage"
                                Datastore.Audit, Datastore.AllocateSpace
  task_seconds, fail_seconds    how long successful / refused tasks run
  vzdump_seconds                how long vzdump takes per guest (0.5)
  backup_size_bytes             archive size (262144)
  restore_seconds               how long a restore runs (task_seconds)
  delete_seconds                how long an imgdel task runs (0.05)
  archive_seed                  varies every archive's bytes ("pve-sim")
  cluster_name                  {{cluster}} in notes ("standalone node" for one node)
  storages {id: {type, path, content[], nodes[], shared, disable}}
                                storage.cfg; type dir (has `path`, "{node}" in it
                                is replaced, archives in {path}/dump) or lvmthin,
                                zfspool, … (no files). Default: `local` dir with
                                backup,iso,vztmpl at <dir of --stats>/pve-sim-storage/
                                {node}/local and `local-lvm` lvmthin with images,rootdir.
                                A path without {node} is one directory for all nodes
                                (as a shared storage).
  status_blips                  the first N task-status requests answer 503
  guests[]: vmid, type (qemu|lxc), node, name, status, template,
            lock ("backup", "snapshot", …: a stale lock, kept forever unless one of:)
            lock_until_seconds (after simulator start),
            lock_seconds_after_first_attempt (after the first snapshot or vzdump attempt hit it),
            backup_running_seconds (a scheduled vzdump of this guest, by root@pam, is running
                                    at start for N s: guest lock `backup` and the node's vzdump
                                    lock, then its archive is there),
            backup_seconds, backup_size_bytes (this guest's vzdump duration and archive size),
            backup_warnings [texts] (WARN: lines; the job ends "WARNINGS: n"),
            backup_error (this guest's backup fails half-way with this text: "job errors"),
            disk_storage (where its disk lives, "local-lvm"; the default restore target),
            snapshot_feature (false: "snapshot feature is not available"; for a CT
                              vzdump in snapshot mode falls back to suspend),
            freeze_warning (task ends "WARNINGS: 1" with this log line),
            create_error (the create task fails with this text),
            replicated_snapshots [names] (delete refused: needed by replication),
            http_error {status, message} (POST snapshot answers this),
            snapshots[]: name ("{stamp}" = its UTC time), description,
                         snaptime | age_days, snapstate, parent

Python 3.9+ (random.randbytes), standard library only.
"""

import argparse
import hashlib
import heapq
import json
import os
import random
import re
import shutil
import ssl
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# pve-configid (PVE::JSONSchema), the format of pve-snapshot-name, maxLength 40.
CONFIGID_RE = re.compile(r"^[a-z][a-z0-9_-]+$", re.IGNORECASE)
BOOL_TRUE = re.compile(r"^(1|true|yes|on)$", re.IGNORECASE)
BOOL_FALSE = re.compile(r"^(0|false|no|off)$", re.IGNORECASE)

# ---- Proxmox VE formats and constants used by the backup endpoints --------
# PVE::Storage $BACKUP_EXT_RE_2 with Plugin::KNOWN_COMPRESSION_FORMATS.
BACKUP_EXT_RE = r"\.(tgz|(?:tar|vma)(?:\.(gz|lzo|zst|bz2))?)"
BACKUP_VOLNAME_RE = re.compile(r"^backup/([^/]+" + BACKUP_EXT_RE + r")$")
BACKUP_FILE_RE = re.compile(r"^(vzdump-(lxc|openvz|qemu)-.+" + BACKUP_EXT_RE + r")$")
VOLID_RE = re.compile(r"^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$", re.IGNORECASE)  # Plugin::parse_volume_id
STORAGE_ID_RE = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.IGNORECASE)     # JSONSchema::parse_id
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
VMID_RE = re.compile(r"^[1-9][0-9]{2,8}$")
INT_RE = re.compile(r"^[+-]?\d+$")
NUM_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
CONTENT_TYPES = ("images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import")
PATH_STORAGE_TYPES = ("dir", "nfs", "cifs", "cephfs", "btrfs")
# vzdump --compress -> archive extension (PVE::VZDump::compressor_info)
COMPRESS_EXT = {"0": None, "1": "lzo", "lzo": "lzo", "gzip": "gz", "zstd": "zst"}
DECOMPRESSOR = {"zst": "zstd -q -d -c", "gz": "zcat", "lzo": "lzop -d -c", "bz2": "bzip2 -d -c"}
# The first bytes of the simulated archives, so `file` names their format.
MAGIC = {"zst": b"\x28\xb5\x2f\xfd", "gz": b"\x1f\x8b\x08\x00", "lzo": b"\x89LZO\x00\r\n\x1a\n",
         "bz2": b"BZh9", "vma": b"VMA\x00"}
VZDUMP_LOCKFILE = "/var/run/vzdump.lock"
NOT_IN_SCHEMA = "property is not defined in schema and the schema does not allow additional properties"
PARAM_FAILED = "Parameter verification failed."

# vzdump's parameters (PVE::VZDump::Common $confdesc + the API's job-id, stdout).
VZDUMP_SCHEMA = {
    "vmid": {"format": "pve-vmid-list"}, "node": {"format": "pve-node"},
    "all": {"type": "boolean"}, "stdexcludes": {"type": "boolean"},
    "compress": {"enum": ["0", "1", "gzip", "lzo", "zstd"]},
    "pigz": {"type": "integer"}, "zstd": {"type": "integer"}, "quiet": {"type": "boolean"},
    "mode": {"enum": ["snapshot", "suspend", "stop"]},
    "exclude": {"format": "pve-vmid-list"}, "exclude-path": {}, "mailto": {},
    "mailnotification": {"enum": ["always", "failure"]},
    "notification-mode": {"enum": ["auto", "legacy-sendmail", "notification-system"]},
    "tmpdir": {}, "dumpdir": {}, "script": {}, "storage": {"format": "pve-storage-id"},
    "stop": {"type": "boolean"}, "bwlimit": {"type": "integer", "minimum": 0},
    "ionice": {"type": "integer", "minimum": 0, "maximum": 8}, "performance": {}, "fleecing": {},
    "lockwait": {"type": "integer", "minimum": 0}, "stopwait": {"type": "integer", "minimum": 0},
    "prune-backups": {}, "remove": {"type": "boolean"}, "pool": {},
    "notes-template": {"maxLength": 1024, "requires": "storage"},
    "protected": {"type": "boolean", "requires": "storage"},
    "pbs-change-detection-mode": {"enum": ["legacy", "data", "metadata"]},
    "job-id": {}, "stdout": {"type": "boolean"},
}
# POST /nodes/{node}/qemu with `archive` (qemu-server API2/Qemu.pm create_vm); of the
# VM config keys only these few are accepted as overrides.
QEMU_RESTORE_SCHEMA = {
    "vmid": {"type": "integer", "format": "pve-vmid", "optional": False},
    "archive": {"maxLength": 255}, "storage": {"format": "pve-storage-id"},
    "force": {"type": "boolean", "requires": "archive"},
    "unique": {"type": "boolean", "requires": "archive"},
    "live-restore": {"type": "boolean"}, "pool": {},
    "bwlimit": {"type": "integer", "minimum": 0}, "start": {"type": "boolean"},
    "ha-managed": {"type": "boolean"}, "import-working-storage": {"format": "pve-storage-id"},
    "name": {}, "description": {"maxLength": 8192}, "memory": {}, "onboot": {"type": "boolean"},
    "cores": {"type": "integer", "minimum": 1}, "sockets": {"type": "integer", "minimum": 1},
    "tags": {},
}
# POST /nodes/{node}/lxc (pve-container API2/LXC.pm create_vm), likewise.
LXC_RESTORE_SCHEMA = {
    "vmid": {"type": "integer", "format": "pve-vmid", "optional": False},
    "ostemplate": {"maxLength": 255, "optional": False}, "password": {"minLength": 5},
    "storage": {"format": "pve-storage-id"}, "force": {"type": "boolean"},
    "restore": {"type": "boolean"}, "unique": {"type": "boolean", "requires": "restore"},
    "pool": {}, "ignore-unpack-errors": {"type": "boolean"}, "ssh-public-keys": {},
    "bwlimit": {"type": "number", "minimum": 0}, "start": {"type": "boolean"},
    "ha-managed": {"type": "boolean"},
    "hostname": {}, "description": {"maxLength": 8192}, "memory": {"type": "integer", "minimum": 16},
    "swap": {"type": "integer", "minimum": 0}, "cores": {"type": "integer", "minimum": 1},
    "onboot": {"type": "boolean"}, "tags": {}, "unprivileged": {"type": "boolean"},
    "rootfs": {},
}


def truthy(v):
    return v is not None and bool(BOOL_TRUE.match(str(v)))


def split_list(text):
    """PVE::ParseUtils::split_list."""
    text = text or ""
    if "\0" in text:
        return text.split("\0")
    return re.sub(r"[,;]", " ", text).split()


def check_format(fmt, value):
    """PVE::JSONSchema check_format for the formats used here; an error text or None."""
    if fmt.endswith("-list"):
        for v in split_list(value):
            err = check_format(fmt[:-5], v)
            if err:
                return err
        return None
    if fmt == "pve-vmid":
        return None if VMID_RE.match(str(value)) else "value does not look like a valid VM ID"
    if fmt == "pve-storage-id":
        if len(value) < 2:
            return f"storage ID '{value}' cannot be shorter than 2 characters"
        return None if STORAGE_ID_RE.match(value) else f"storage ID '{value}' contains illegal characters"
    if fmt == "pve-node":
        return None if NODE_RE.match(value) else "value does not look like a valid node name"
    if fmt == "pve-storage-content":
        return None if value in CONTENT_TYPES else f"invalid content type '{value}'"
    raise ValueError(f"unknown format {fmt}")


def validate(params, schema, extra=None):
    """The checks PVE::JSONSchema::validate makes on a flat parameter hash, with
    its messages: unknown keys, missing, type, format, length, range, enum,
    `requires`. `extra(key)` may accept keys by pattern (net0, mp1, …)."""
    errors = {}
    for k in params:
        if k not in schema and not (extra and extra(k)):
            errors[k] = NOT_IN_SCHEMA
    for k, spec in schema.items():
        if spec.get("requires") and params.get(k) is not None and params.get(spec["requires"]) is None:
            errors[spec["requires"]] = f"missing property required by '{k}'"
    for k, spec in schema.items():
        v = params.get(k)
        if v is None:
            if spec.get("optional", True) is False:
                errors[k] = "property is missing and it is not optional"
            continue
        ty = spec.get("type", "string")
        if ty == "boolean" and not (BOOL_TRUE.match(v) or BOOL_FALSE.match(v)):
            errors[k] = f"type check ('boolean') failed - got '{v}'"
            continue
        if ty == "integer" and not INT_RE.match(v):
            errors[k] = f"type check ('integer') failed - got '{v}'"
            continue
        if ty == "number" and not NUM_RE.match(v):
            errors[k] = f"type check ('number') failed - got '{v}'"
            continue
        if spec.get("format"):
            err = check_format(spec["format"], v)
            if err:
                errors[k] = f"invalid format - {err}"
                continue
        if "maxLength" in spec and len(v) > spec["maxLength"]:
            errors[k] = f"value may only be {spec['maxLength']} characters long"
            continue
        if "minLength" in spec and len(v) < spec["minLength"]:
            errors[k] = f"value must be at least {spec['minLength']} characters long"
            continue
        if ty in ("integer", "number"):
            if "maximum" in spec and float(v) > spec["maximum"]:
                errors[k] = f"value must have a maximum value of {spec['maximum']}"
                continue
            if "minimum" in spec and float(v) < spec["minimum"]:
                errors[k] = f"value must have a minimum value of {spec['minimum']}"
                continue
        if "enum" in spec and v not in spec["enum"]:
            errors[k] = f"value '{v}' does not have a value in the enumeration '{', '.join(spec['enum'])}'"
    return errors


def shell_quote(s):
    """String::ShellQuote::shell_quote (as PVE::Tools::shellquote)."""
    if s == "":
        return "''"
    if not re.search(r"[^\w!%+,\-./:=@^]", s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def format_size(size):
    """PVE::VZDump::format_size."""
    kb = size / 1024
    if kb < 1024:
        return f"{int(kb)}KB"
    mb = size / (1024 * 1024)
    if mb < 1024:
        return f"{int(mb)}MB"
    gb = mb / 1024
    if gb < 1024:
        return "%.2fGB" % gb
    return "%.2fTB" % (gb / 1024)


def render_bytes(n):
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return f"{n} B"


def format_time(seconds):
    seconds = int(seconds)
    return "%02d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60, seconds % 60)


def localstamp(t, fmt="%Y-%m-%d %H:%M:%S"):
    return time.strftime(fmt, time.localtime(t))


def archive_stream(seed, size, magic, start, end):
    """Bytes [start, end) of a simulated archive: `magic`, then a pseudo-random
    stream made of 1 MiB blocks, block i seeded by "{seed}/{i}" (deterministic
    for a guest and backup number, different for every backup)."""
    out = bytearray()
    pos = start
    end = min(end, size)
    while pos < end:
        if pos < len(magic):
            take = min(end, len(magic)) - pos
            out += magic[pos:pos + take]
            pos += take
            continue
        off = pos - len(magic)
        block, inner = divmod(off, 1 << 20)
        data = random.Random(f"{seed}/{block}").randbytes(1 << 20)
        take = min(end - pos, (1 << 20) - inner)
        out += data[inner:inner + take]
        pos += take
    return bytes(out)


class Deferred:
    """An answer that waits (outside the simulator lock) for a task, as
    DELETE …/content/{volume} with `delay` does."""

    def __init__(self, upid, delay):
        self.upid = upid
        self.delay = delay


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
        self.node = scenario.get("node") or self.nodes[0]
        self.token_id = scenario["token"]["id"]
        self.token_secret = scenario["token"]["secret"]
        # ACLs by path: "*" or a VMID for /vms/{vmid} (as before), or a path
        # ("/storage", "/storage/local", "/", "/nodes/pve1") inherited downwards.
        self.privileges = scenario.get("privileges", {
            "*": ["VM.Audit", "VM.Snapshot", "VM.Backup", "VM.Allocate"],
            "/storage": ["Datastore.Audit", "Datastore.AllocateSpace"],
        })
        self.task_seconds = float(scenario.get("task_seconds", 0.3))
        # The first N task-status requests fail as during a pveproxy restart.
        self.status_blips = int(scenario.get("status_blips", 0))
        self.fail_seconds = float(scenario.get("fail_seconds", 0.05))
        self.vzdump_seconds = float(scenario.get("vzdump_seconds", 0.5))
        self.backup_size_bytes = int(scenario.get("backup_size_bytes", 256 * 1024))
        self.restore_seconds = float(scenario.get("restore_seconds", self.task_seconds))
        self.delete_seconds = float(scenario.get("delete_seconds", 0.05))
        self.archive_seed = str(scenario.get("archive_seed", "pve-sim"))
        self.cluster_name = scenario.get("cluster_name") or (
            "pve-sim-cluster" if len(self.nodes) > 1 else "standalone node")
        self.load_storages(scenario, stats_path)
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
            g.setdefault("disk_storage", "local-lvm")
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
        self.vzlocks = {}  # node -> vzdump's /var/run/vzdump.lock: holder, FIFO of waiters
        self.vzdump_stats = {"started": 0, "finished": 0, "ok": 0, "warnings": 0, "failed": 0}
        self.archives = []
        self.archives_deleted = []
        self.restores = []
        for g in sorted(self.guests.values(), key=lambda g: g["vmid"]):
            if g.get("backup_running_seconds") is not None:
                self.scheduled_backup(g)
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
                {k: t[k] for k in ("upid", "node", "type", "vmid", "user", "exitstatus", "start", "end")}
                for t in self.tasks.values()
            ],
            "created": self.created,
            "deleted": self.deleted,
            "requests": self.requests,
            "snapshots": {
                str(vmid): sorted(g["snapshots"].keys()) for vmid, g in self.guests.items()
            },
            "vzdump": self.vzdump_stats,
            "archives": self.archives,
            "archives_deleted": self.archives_deleted,
            "restores": self.restores,
            "guests": {
                str(vmid): {k: g.get(k) for k in ("node", "type", "name", "status", "lock", "template")}
                for vmid, g in sorted(self.guests.items())
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
        for key in (str(vmid), f"/vms/{vmid}", "*", "/vms", "/"):
            if key in self.privileges:
                return self.privileges[key]
        return []

    def privs_at(self, path):
        """Privileges on an ACL path: the most specific entry on it or above it."""
        if path.startswith("/vms/"):
            return self.privs(path[len("/vms/"):])
        parts = path.rstrip("/").split("/")
        while parts:
            key = "/".join(parts) or "/"
            if key in self.privileges:
                return self.privileges[key]
            parts = parts[:-1]
        return []

    def has_path(self, path, priv):
        return priv in self.privs_at(path)

    def has_any(self, path, privs):
        return any(p in self.privs_at(path) for p in privs)

    def check_path(self, path, priv):
        if not self.has_path(path, priv):
            raise ApiError(403, f"Permission check failed ({path}, {priv})")

    def check_any(self, path, privs):
        if not self.has_any(path, privs):
            raise ApiError(403, f"Permission check failed ({path}, {'|'.join(privs)})")

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
            **({"lock": g["lock"]} if g["lock"] else {}),
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
                if g["lock"]:
                    e["lock"] = g["lock"]
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

    # ---- storages (storage.cfg) ------------------------------------------
    def load_storages(self, scenario, stats_path):
        base = os.path.join(os.path.dirname(os.path.abspath(stats_path)), "pve-sim-storage")
        conf = scenario.get("storages")
        if conf is None:  # a fresh PVE install: `local` (dir) and `local-lvm` (lvmthin)
            conf = {"local": {"type": "dir", "content": ["backup", "iso", "vztmpl"]},
                    "local-lvm": {"type": "lvmthin", "content": ["images", "rootdir"]}}
        self.storages = {}
        for sid, c in conf.items():
            if not STORAGE_ID_RE.match(sid):
                raise ValueError(f"scenario: bad storage ID '{sid}'")
            c = dict(c)
            c.setdefault("type", "dir")
            content = c.get("content", ["backup"] if c["type"] in PATH_STORAGE_TYPES else ["images", "rootdir"])
            c["content"] = set(split_list(content) if isinstance(content, str) else content)
            if c["type"] in PATH_STORAGE_TYPES:
                c.setdefault("path", os.path.join(base, "{node}", sid))
            elif c["content"] & {"backup", "iso", "vztmpl", "snippets", "import"}:
                raise ValueError(f"scenario: storage '{sid}' of type {c['type']} cannot hold file content")
            c["nodes"] = set(c["nodes"]) if c.get("nodes") else None
            c["shared"] = 1 if c.get("shared", c["type"] in ("nfs", "cifs", "cephfs")) else 0
            c["disable"] = 1 if c.get("disable") else 0
            self.storages[sid] = c
            if c.get("path"):
                for node in self.nodes:
                    if c["nodes"] is None or node in c["nodes"]:
                        os.makedirs(self.dumpdir(sid, node), exist_ok=True)

    def storage_dir(self, sid, node):
        return self.storages[sid]["path"].replace("{node}", node)

    def dumpdir(self, sid, node):
        return os.path.join(self.storage_dir(sid, node), "dump")

    def storage_config(self, sid):
        """PVE::Storage::storage_config."""
        sc = self.storages.get(sid)
        if sc is None:
            raise ApiError(500, f"storage '{sid}' does not exist")
        return sc

    def read_storage(self, sid):
        """GET /storage/{storage} (pve-storage PVE/API2/Storage/Config.pm `read`):
        the storage.cfg section; needs Datastore.Allocate on /storage/{storage}.
        A `path` holding {node} (this simulator's per-node directories) is
        shown for the scenario's `node`."""
        self.storage_path_param(sid)
        self.check_path(f"/storage/{sid}", "Datastore.Allocate")
        sc = self.storage_config(sid)
        out = {"storage": sid, "type": sc["type"], "content": ",".join(sorted(sc["content"])),
               "digest": hashlib.sha1(sid.encode()).hexdigest()}
        if sc.get("path"):
            out["path"] = self.storage_dir(sid, self.node)
        if sc["shared"]:
            out["shared"] = 1
        if sc["disable"]:
            out["disable"] = 1
        if sc["nodes"] is not None:
            out["nodes"] = ",".join(sorted(sc["nodes"]))
        return out

    def storage_check_enabled(self, sid, node):
        """PVE::Storage::storage_check_enabled (+ storage_check_node)."""
        sc = self.storage_config(sid)
        if sc["disable"]:
            raise ApiError(500, f"storage '{sid}' is disabled")
        if sc["nodes"] is not None and node not in sc["nodes"]:
            raise ApiError(500, f"storage '{sid}' is not available on node '{node}'")
        return sc

    def parse_volname(self, sid, volname):
        """(vtype, name, owner vmid) as the storage plugin's parse_volname."""
        sc = self.storage_config(sid)
        if sc["type"] in PATH_STORAGE_TYPES:
            m = BACKUP_VOLNAME_RE.match(volname)
            if m:
                fn = m.group(1)
                o = re.match(r"^vzdump-(openvz|lxc|qemu)-(\d+)-.+", fn)
                return "backup", fn, int(o.group(2)) if o else None
            if re.match(r"^iso/[^/]+\.(iso|img)$", volname, re.IGNORECASE):
                return "iso", volname[4:], None
            if re.match(r"^vztmpl/[^/]+\.tar\.(gz|xz|zst|bz2)$", volname):
                return "vztmpl", volname[7:], None
            if re.match(r"^snippets/[^/]+$", volname):
                return "snippets", volname[9:], None
            m = re.match(r"^(\d+)/(\S+)$", volname)
            if m:
                return "images", m.group(2), int(m.group(1))
            raise ApiError(500, f"unable to parse directory volume name '{volname}'")
        m = re.match(r"^((?:vm|base|subvol)-(\d+)-\S+)$", volname)
        if m:
            return "images", volname, int(m.group(2))
        kind = {"zfspool": "zfs", "rbd": "rbd"}.get(sc["type"], "lvm")
        raise ApiError(500, f"unable to parse {kind} volume name '{volname}'")

    def volume_path(self, volid, node):
        """PVE::Storage::path: (path, owner, vtype)."""
        m = VOLID_RE.match(volid)
        if not m:
            raise ApiError(500, f"unable to parse volume ID '{volid}'")
        sid, volname = m.groups()
        sc = self.storage_config(sid)
        vtype, name, owner = self.parse_volname(sid, volname)
        if sc["type"] in PATH_STORAGE_TYPES:
            sub = {"backup": "dump", "iso": "template/iso", "vztmpl": "template/cache",
                   "snippets": "snippets", "images": f"images/{owner}"}[vtype]
            return os.path.join(self.storage_dir(sid, node), sub, name), owner, vtype
        return f"/dev/pve/{name}", owner, vtype

    def real_volume_id(self, sid, volume):
        """API2/Storage/Content.pm $real_volume_id."""
        if ":" in volume:
            m = VOLID_RE.match(volume)
            if not m:
                raise ApiError(400, PARAM_FAILED, {"volume": f"unable to parse volume ID '{volume}'"})
            if sid and m.group(1) != sid:
                raise ApiError(400, PARAM_FAILED, {"volume": f"storage ID mismatch ({m.group(1)} != {sid})"})
            return volume, m.group(1)
        if not sid:
            raise ApiError(400, PARAM_FAILED, {"volume": "no storage specified - incomplete volume ID"})
        return f"{sid}:{volume}", sid

    def check_volume_access(self, vmid, volid, want=None):
        """PVE::Storage::check_volume_access (the user is never root@pam: a token)."""
        m = VOLID_RE.match(volid)
        if not m:
            # die without "\n" in Storage.pm: Perl appends where it died.
            raise ApiError(500, "Only root can pass arbitrary filesystem paths. at /usr/share/perl5/PVE/Storage.pm line 651.")
        sid, volname = m.groups()
        vtype, _, owner = self.parse_volname(sid, volname)
        if want and vtype != want and not (want == "rootdir" and vtype == "images"):
            raise ApiError(500, f"unable to use volume {volid} - content type needs to be '{want}'")
        if self.has_path(f"/storage/{sid}", "Datastore.Allocate"):
            return
        if vtype in ("iso", "vztmpl", "import"):
            self.check_any(f"/storage/{sid}", ["Datastore.AllocateSpace", "Datastore.Audit"])
        elif owner is not None and vmid is not None and owner == vmid:
            return
        elif vtype == "backup" and owner:
            self.check_path(f"/storage/{sid}", "Datastore.AllocateSpace")
            self.check(owner, "VM.Backup")
        elif vtype in ("images", "rootdir") and owner:
            self.check_path(f"/storage/{sid}", "Datastore.Audit")
            self.check(owner, "VM.Config.Disk")
        else:
            raise ApiError(500, f"missing privileges to access {volid}")

    def node_check(self, node):
        if node not in self.nodes:
            raise ApiError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known")

    # ---- processes: tasks whose steps run as events ----------------------
    def spawn(self, task, gen):
        """Run generator `gen` as the body of `task`: it yields ("sleep", s) or
        ("lock", node, max_wait) for vzdump's node-wide lock (answered
        "acquired" / "waited" / "timeout")."""
        proc = {"gen": gen, "task": task}
        self.step(proc, None)
        return proc

    def step(self, proc, value):
        try:
            req = proc["gen"].send(value)
        except StopIteration:
            return
        except Exception as e:  # a simulator bug: end the task visibly, keep serving
            traceback.print_exc(file=sys.stderr)
            if proc["task"]["end"] is None:
                self.end_task(proc["task"], f"pve-simulator internal error - {e}")
            return
        if req[0] == "sleep":
            self.schedule(self.t() + req[1], lambda: self.step(proc, None))
            return
        node, wait = req[1], req[2]
        lk = self.vzlocks.setdefault(node, {"holder": None, "waiters": []})
        if lk["holder"] is None:
            lk["holder"] = proc
            self.step(proc, "acquired")
            return
        w = {"proc": proc, "done": False}
        lk["waiters"].append(w)

        def timeout():
            if not w["done"]:
                w["done"] = True
                lk["waiters"].remove(w)
                self.step(proc, "timeout")
        self.schedule(self.t() + wait, timeout)

    def vzlock_busy(self, node):
        return self.vzlocks.get(node, {}).get("holder") is not None

    def vzlock_release(self, node):
        lk = self.vzlocks[node]
        lk["holder"] = None
        while lk["waiters"]:
            w = lk["waiters"].pop(0)
            if w["done"]:
                continue
            w["done"] = True
            lk["holder"] = w["proc"]
            self.schedule(self.t(), lambda: self.step(w["proc"], "waited"))
            break

    def tlog(self, task, line):
        task["log"].append((self.t(), line))

    def end_task(self, task, exitstatus):
        """The worker ends: its last log line says the status (PVE::RESTEnvironment
        fork_worker), except after an exit() without one ("unexpected status")."""
        if exitstatus == "OK":
            self.tlog(task, "TASK OK")
        elif exitstatus.startswith("WARNINGS: "):
            self.tlog(task, "TASK " + exitstatus)
        elif exitstatus != "unexpected status":
            self.tlog(task, "TASK ERROR: " + exitstatus)
        task["end"] = self.t()
        task["exitstatus"] = exitstatus
        task["done"] = True
        if task["type"] == "vzdump":
            self.vzdump_stats["finished"] += 1
            key = "ok" if exitstatus == "OK" else "warnings" if exitstatus.startswith("WARNINGS") else "failed"
            self.vzdump_stats[key] += 1

    # ---- vzdump ----------------------------------------------------------
    def verify_notes_template(self, template):
        """PVE::VZDump $verify_notes_template; an error text or None."""
        if "\n" in template:
            return "contains a line feed"
        problems = []
        for m in re.finditer(r"\\(.)", template, re.DOTALL):
            if m.group(1) not in ("n", "\\"):
                problems.append(f"escape sequence '\\{m.group(1)}' at char {m.end() - 2}")
        for m in re.finditer(r"\{\{([^\s{}]+)\}\}", template):
            if m.group(1) not in ("cluster", "guestname", "node", "vmid"):
                problems.append(f"variable '{m.group(1)}' at char {m.end() - len(m.group(1))}")
        return "found unknown: " + ", ".join(problems) if problems else None

    def generate_notes(self, template, g, node):
        hostname = g["name"] if g["type"] == "qemu" else (g["name"] or f"CT{g['vmid']}")
        info = {"cluster": self.cluster_name, "guestname": hostname or f"VM {g['vmid']}",
                "node": node, "vmid": str(g["vmid"])}
        text = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), template)
        return re.sub(r"\{\{(cluster|guestname|node|vmid)\}\}", lambda m: info[m.group(1)], text)

    def vzdump(self, node, params, user):
        """POST /nodes/{node}/vzdump (pve-manager PVE/API2/VZDump.pm)."""
        errors = validate(params, VZDUMP_SCHEMA)
        if errors:
            raise ApiError(400, PARAM_FAILED, errors)
        self.node_check(node)
        if params.get("node") and params["node"] != node:
            raise ApiError(400, PARAM_FAILED, {"node": "option is only allowed on the command line interface."})
        if truthy(params.get("stdout")):
            raise ApiError(400, PARAM_FAILED, {"stdout": "option is only allowed on the command line interface."})
        # assert_param_permission_vzdump: an API token is never root@pam.
        for key in ("tmpdir", "dumpdir", "script", "job-id"):
            if key in params:
                raise ApiError(400, PARAM_FAILED, {key: "Only root may set this option."})
        if any(k in params for k in ("bwlimit", "ionice", "performance")):
            self.check_path("/", "Sys.Modify")
        storage = params.get("storage") or "local"  # get_storage_param
        if params.get("prune-backups") is not None:
            self.check_path(f"/storage/{storage}", "Datastore.Allocate")
        for k in ("pool", "fleecing", "performance", "exclude-path"):
            if params.get(k):
                raise ApiError(501, f"pve-simulator: vzdump parameter '{k}' is not modelled")
        if params.get("prune-backups") not in (None, "keep-all=1"):
            raise ApiError(501, "pve-simulator: vzdump pruning ('prune-backups') is not modelled")
        if truthy(params.get("stop")):
            raise ApiError(501, "pve-simulator: vzdump parameter 'stop' is not modelled")
        # verify_vzdump_parameters
        every = truthy(params.get("all"))
        if every and params.get("vmid"):
            raise ApiError(400, PARAM_FAILED, {"all": "option conflicts with option 'vmid'"})
        if params.get("exclude") and params.get("vmid"):
            raise ApiError(400, PARAM_FAILED, {"exclude": "option conflicts with option 'vmid'"})
        if params.get("notes-template"):
            err = self.verify_notes_template(params["notes-template"])
            if err:
                raise ApiError(400, PARAM_FAILED, {"notes-template": err})
        if params.get("exclude") is not None:
            every = True
        if not every and not params.get("vmid"):
            raise ApiError(400, PARAM_FAILED, {"vmid": "property is missing"})
        # get_included_guests
        if every:
            excluded = {int(v) for v in split_list(params.get("exclude"))}
            vmids = [v for v in self.guests if v not in excluded]
        else:
            vmids = [int(v) for v in split_list(params["vmid"])]
        local, skip = [], []
        for v in dict.fromkeys(vmids):
            g = self.guests.get(v)
            (local if g is None or g["node"] == node else skip).append(v)
        if not local and not every:
            return "OK"  # "silent exit if specified VMs run on other nodes"
        self.check_path(f"/storage/{storage}", "Datastore.AllocateSpace")
        cmd = "vzdump"
        if params.get("vmid"):
            cmd += " " + " ".join(split_list(params["vmid"]))
        for k in sorted(set(params) | {"node"}):
            if k in ("vmid", "stdout", "job-id"):
                continue
            v = node if k == "node" else params[k]
            if v != "":
                cmd += f" --{k} {shell_quote(v)}"
        task = self.open_task(node, "vzdump", local[0] if len(local) == 1 else "", user)
        self.vzdump_stats["started"] += 1
        opts = {"mode": params.get("mode", "snapshot"), "compress": params.get("compress", "0"),
                "notes": params.get("notes-template"), "protected": truthy(params.get("protected")),
                "lockwait": int(params.get("lockwait", 180)), "all": every,
                "ionice": int(params.get("ionice", 7)), "bwlimit": params.get("bwlimit")}
        self.spawn(task, self.vzdump_job(task, node, local, skip, opts, storage, cmd))
        self.count_in_flight()
        return task["upid"]

    def vzdump_job(self, task, node, vmids, skip, opts, storage, cmdline):
        """The vzdump worker: PVE::VZDump->new, getlock, exec_backup."""
        errs = []
        sc = None
        try:
            self.storage_check_enabled(storage, node)
        except ApiError as e:
            errs.append(f"could not activate storage '{storage}': {e.message}")
        try:
            sc = self.storage_config(storage)
            if "backup" not in sc["content"]:
                raise ApiError(500, f"can't use storage '{storage}' for backups - wrong content type")
        except ApiError as e:
            errs.append(f"could not get storage information for '{storage}': {e.message}")
        if errs:
            self.end_task(task, " ".join(errs))
            return
        dumpdir = self.dumpdir(storage, node)
        if self.vzlock_busy(node):
            if opts["lockwait"] == 0:
                self.tlog(task, f"ERROR: can't acquire lock '{VZDUMP_LOCKFILE}' (wait = 0)")
                self.end_task(task, "unexpected status")  # the worker exit()s without a status line
                return
            self.tlog(task, "INFO: trying to get global lock - waiting...")
        got = yield ("lock", node, opts["lockwait"] * 60)
        if got == "timeout":
            self.tlog(task, f"ERROR: can't acquire lock '{VZDUMP_LOCKFILE}' - got timeout")
            self.end_task(task, "unexpected status")
            return
        try:
            if got == "waited":
                self.tlog(task, "INFO: got global lock")
            self.tlog(task, f"INFO: starting new backup job: {cmdline}")
            if skip:
                self.tlog(task, "INFO: skip external VMs: " + ", ".join(str(v) for v in sorted(skip)))
            todo = []
            for vmid in sorted(vmids):
                if vmid in self.guests and not self.has(vmid, "VM.Backup"):
                    if opts["all"]:
                        continue
                    self.end_task(task, f"Permission check failed (/vms/{vmid}, VM.Backup)")
                    return
                todo.append(vmid)
            errcount = warnings = 0
            for vmid in todo:
                ok, warned = yield from self.backup_guest(task, node, vmid, opts, storage, dumpdir)
                errcount += 0 if ok else 1
                warnings += warned
            if errcount:
                self.tlog(task, "INFO: Backup job finished with errors")
                self.end_task(task, "job errors")
            else:
                self.tlog(task, "INFO: Backup job finished successfully")
                self.end_task(task, f"WARNINGS: {warnings}" if warnings else "OK")
        finally:
            self.vzlock_release(node)

    def backup_guest(self, task, node, vmid, opts, storage, dumpdir):
        """PVE::VZDump::exec_backup_task for one guest; returns (ok, warnings)."""
        vmlog = []

        def say(level, msg):
            self.tlog(task, f"{level}: {msg}")
            vmlog.append(f"{localstamp(self.t())} {level}: {msg}")

        g = self.guests.get(vmid)
        if g is None:
            self.tlog(task, f"ERROR: Backup of VM {vmid} failed - unable to find VM '{vmid}'")
            self.tlog(task, f"INFO: Failed at {localstamp(self.t())}")
            return False, 0
        start = self.t()
        gtype = g["type"]
        kind = "VM" if gtype == "qemu" else "CT"
        basename = f"vzdump-{gtype}-{vmid}-{localstamp(start, '%Y_%m_%d-%H_%M_%S')}"
        comp = COMPRESS_EXT[opts["compress"]]
        ext = (".vma" if gtype == "qemu" else ".tar") + (f".{comp}" if comp else "")
        target = os.path.join(dumpdir, basename + ext)
        tmptar = re.sub(r"\.[^.]+$", ".dat", target)
        tmpdir = os.path.join(dumpdir, basename + ".tmp")
        logfile = os.path.join(dumpdir, basename + ".log")
        seconds = float(opts.get("seconds", {}).get(vmid, g.get("backup_seconds", self.vzdump_seconds)))
        size = int(g.get("backup_size_bytes", self.backup_size_bytes))
        warns = g.get("backup_warnings") or []
        warns = [warns] if isinstance(warns, str) else list(warns)
        failure = g.get("backup_error")
        for p in (tmptar, logfile):
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(tmpdir, ignore_errors=True)
        os.makedirs(tmpdir, exist_ok=True)
        say("INFO", f"Starting Backup of VM {vmid} ({gtype})")
        self.tlog(task, f"INFO: Backup started at {localstamp(self.t())}")
        running = g["status"] == "running" and not g["template"]
        say("INFO", f"status = {'running' if running else 'stopped'}")
        err = None
        locked = False
        restart = False
        warned = 0
        if g["lock"]:
            err = f"{kind} is locked ({g['lock']})"
            after = g.pop("lock_seconds_after_first_attempt", None)
            if after is not None:
                g["unlock_at"] = self.t() + float(after)
                self.schedule(g["unlock_at"], self.lock_release(g, "unlock_at"))
        else:
            g["lock"] = "backup"
            locked = True
        if err is None:
            mode = opts["mode"] if running else "stop"
            if gtype == "qemu":
                say("INFO", f"VM Name: {g['name']}")
                say("INFO", f"include disk 'scsi0' '{g.get('disk_storage', 'local-lvm')}:vm-{vmid}-disk-0' 32G")
            else:
                say("INFO", f"CT Name: {g['name']}")
                say("INFO", "including mount point rootfs ('/') in backup")
                if mode == "snapshot" and not g["snapshot_feature"]:
                    say("INFO", "mode failure - some volumes do not support snapshots")
                    say("INFO", "trying 'suspend' mode instead")
                    mode = "suspend"
            say("INFO", f"backup mode: {mode}")
            if opts["bwlimit"]:
                say("INFO", f"bandwidth limit: {opts['bwlimit']} KiB/s")
            say("INFO", f"ionice priority: {opts['ionice']}")
            if mode == "stop" and running:
                say("INFO", "stopping virtual guest")
                g["status"] = "stopped"
                restart = True
            elif mode == "suspend":
                say("INFO", "suspending guest")
            elif gtype == "lxc":
                say("INFO", "create storage snapshot 'vzdump'")
            yield ("sleep", seconds * 0.1)
            if mode == "suspend":
                say("INFO", "resuming guest")
                say("INFO", "guest is online again after <1 seconds")
            say("INFO", f"creating vzdump archive '{target}'")
            g["backups"] = g.get("backups", 0) + 1
            seed = f"{self.archive_seed}:{vmid}:{g['backups']}"
            magic = MAGIC.get(comp or ("vma" if gtype == "qemu" else ""), b"")
            digest = hashlib.sha256()
            open(tmptar, "wb").close()
            if gtype == "qemu":
                say("INFO", f"started backup task '{uuid.uuid5(uuid.NAMESPACE_URL, seed)}'")
            written = 0
            total = 32 << 30
            for step in range(1, 5):
                yield ("sleep", seconds * 0.2)
                if step == 2 and warns:
                    for w in warns:
                        say("WARN", w)
                        warned += 1
                if step == 3 and failure:
                    if gtype == "qemu":
                        say("INFO", "aborting backup job")
                    err = failure
                    break
                upto = size * step // 4
                chunk = archive_stream(seed, size, magic, written, upto)
                with open(tmptar, "ab") as f:
                    f.write(chunk)
                digest.update(chunk)
                written = upto
                if gtype == "qemu":
                    secs = max(1, int(self.t() - start))
                    say("INFO", "%3d%% (%s of %s) in %ds, read: %s/s, write: %s/s" % (
                        step * 25, render_bytes(total * step // 4), render_bytes(total), secs,
                        render_bytes(total * step // 4 // secs), render_bytes(written // secs)))
            if err is None:
                yield ("sleep", seconds * 0.1)
                secs = int(self.t() - start)
                if gtype == "qemu":
                    say("INFO", f"backup is sparse: {render_bytes(total - size)} "
                                f"({(total - size) * 100 // total}%) total zero data")
                    say("INFO", f"transferred {render_bytes(total)} in {secs} seconds" if secs
                                else f"transferred {render_bytes(total)} in <1 seconds")
                else:
                    say("INFO", f"Total bytes written: {size} ({size / 1048576:.1f}MiB, "
                                f"{size / 1048576 / max(secs, 1):.1f}MiB/s)")
                replaced = os.path.exists(target)
                os.replace(tmptar, target)  # rename(): a same-second archive is replaced
                say("INFO", f"archive file size: {format_size(size)}")
                volid = f"{storage}:backup/{os.path.basename(target)}"
                if opts["notes"]:
                    say("INFO", "adding notes to backup")
                    with open(target + ".notes", "w", encoding="utf-8") as f:
                        f.write(self.generate_notes(opts["notes"], g, node))
                if opts["protected"]:
                    say("INFO", "marking backup as protected")
                    open(target + ".protected", "w").close()
                for old in self.archives:
                    if old["path"] == target and not old.get("replaced_by"):
                        old["replaced_by"] = task["upid"]
                rec = {"volid": volid, "path": target, "node": node, "storage": storage, "vmid": vmid,
                       "type": gtype, "name": g["name"], "template": 1 if g["template"] else 0,
                       "disk_storage": g.get("disk_storage", "local-lvm"), "upid": task["upid"],
                       "backup_number": g["backups"], "size": size, "sha256": digest.hexdigest(),
                       "written_at": self.t(), "replaced": replaced}
                self.archives.append(rec)
        if locked:
            g["lock"] = None
        if gtype == "lxc" and err is None and opts["mode"] == "snapshot" and g["snapshot_feature"] and running:
            say("INFO", "cleanup temporary 'vzdump' snapshot")
        if restart:
            say("INFO", "restarting vm")
            g["status"] = "running"
            say("INFO", f"guest is online again after {max(1, int(self.t() - start))} seconds")
        if os.path.exists(tmptar):
            os.unlink(tmptar)
        shutil.rmtree(tmpdir, ignore_errors=True)
        if err is not None:
            say("ERROR", f"Backup of VM {vmid} failed - {err}")
            self.tlog(task, f"INFO: Failed at {localstamp(self.t())}")
        else:
            say("INFO", f"Finished Backup of VM {vmid} ({format_time(self.t() - start)})")
            self.tlog(task, f"INFO: Backup finished at {localstamp(self.t())}")
        with open(logfile, "w") as f:
            f.write("\n".join(vmlog) + "\n")
        return err is None, warned

    def scheduled_backup(self, g):
        """A backup job (root@pam, as from jobs.cfg) already running at start."""
        node = g["node"]
        storage = next((s for s, c in sorted(self.storages.items()) if "backup" in c["content"]
                        and (c["nodes"] is None or node in c["nodes"]) and not c["disable"]), None)
        if storage is None:
            raise ValueError(f"scenario: backup_running_seconds on {g['vmid']} needs a storage with content 'backup'")
        task = self.open_task(node, "vzdump", g["vmid"], "root@pam")
        self.vzdump_stats["started"] += 1
        opts = {"mode": "snapshot", "compress": "zstd", "notes": "{{guestname}}", "protected": False,
                "lockwait": 180, "all": False, "ionice": 7, "bwlimit": None,
                "seconds": {g["vmid"]: float(g["backup_running_seconds"])}}
        cmd = f"vzdump {g['vmid']} --compress zstd --mode snapshot --node {node} --notes-template '{{{{guestname}}}}' --quiet 1 --storage {storage}"
        self.spawn(task, self.vzdump_job(task, node, [g["vmid"]], [], opts, storage, cmd))

    # ---- storage content (pve-storage PVE/API2/Storage/Content.pm) -------
    def node_storages(self, node, query):
        """GET /nodes/{node}/storage (pve-storage API2/Storage/Status.pm index)."""
        errors = validate(query, {"content": {"format": "pve-storage-content"}, "enabled": {"type": "boolean"},
                                  "format": {"type": "boolean"}, "storage": {"format": "pve-storage-id"},
                                  "target": {"format": "pve-node"}})
        if errors:
            raise ApiError(400, PARAM_FAILED, errors)
        self.node_check(node)
        out = []
        for sid, sc in sorted(self.storages.items()):
            if not self.has_any(f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"]):
                continue
            if query.get("storage") and query["storage"] != sid:
                continue
            if sc["nodes"] is not None and node not in sc["nodes"]:
                continue
            if query.get("content") and query["content"] not in sc["content"]:
                continue
            if truthy(query.get("enabled")) and sc["disable"]:
                continue
            e = {"storage": sid, "type": sc["type"], "content": ",".join(sorted(sc["content"])),
                 "shared": sc["shared"], "enabled": 0 if sc["disable"] else 1, "active": 0 if sc["disable"] else 1}
            if not sc["disable"]:
                if sc.get("path"):
                    du = shutil.disk_usage(self.storage_dir(sid, node))
                    e.update(total=du.total, used=du.used, avail=du.free)
                else:
                    e.update(total=100 << 30, used=10 << 30, avail=90 << 30)
                e["used_fraction"] = e["used"] / e["total"] if e["total"] else 0
            out.append(e)
        return out

    def storage_path_param(self, sid):
        err = check_format("pve-storage-id", sid)
        if err:
            raise ApiError(400, PARAM_FAILED, {"storage": f"invalid format - {err}"})

    def list_content(self, node, sid, query):
        """GET /nodes/{node}/storage/{storage}/content (only `backup` content is
        listed: the dir plugin's get_subdir_files over {path}/dump)."""
        self.storage_path_param(sid)
        errors = validate(query, {"content": {"format": "pve-storage-content"},
                                  "vmid": {"type": "integer", "format": "pve-vmid"}})
        if errors:
            raise ApiError(400, PARAM_FAILED, errors)
        self.node_check(node)
        self.check_any(f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"])
        sc = self.storage_config(sid)
        want = [query["content"]] if query.get("content") else list(CONTENT_TYPES)
        want = [c for c in want if c in sc["content"]]
        self.storage_check_enabled(sid, node)  # activate_storage
        vmid = int(query["vmid"]) if query.get("vmid") else None
        out = []
        if "backup" in want and sc.get("path"):
            d = self.dumpdir(sid, node)
            for fn in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                full = os.path.join(d, fn)
                m = re.match(r"^([^/]+" + BACKUP_EXT_RE + r")$", fn)
                if not m or not os.path.isfile(full):
                    continue
                fmt = m.group(2)
                if vmid is not None and not re.search(rf"\S+-{vmid}-\S+", fn):
                    continue
                st = os.stat(full)
                item = {"volid": f"{sid}:backup/{fn}", "format": fmt, "content": "backup", "size": st.st_size}
                info = self.archive_info(fn)
                if info.get("ctime") is not None:
                    item["ctime"] = info["ctime"]
                item["subtype"] = info.get("type", "unknown")
                vm = re.search(r"-([1-9][0-9]{2,8})-[^/]+\." + re.escape(fmt) + "$", fn)
                if vmid is not None or vm:
                    item["vmid"] = vmid if vmid is not None else int(vm.group(1))
                if os.path.isfile(full + ".notes"):
                    with open(full + ".notes", encoding="utf-8", errors="replace") as f:
                        item["notes"] = f.readline().rstrip("\n")
                if os.path.exists(full + ".protected"):
                    item["protected"] = 1
                item.setdefault("ctime", int(st.st_ctime))
                try:
                    self.check_volume_access(None, item["volid"])
                except ApiError:
                    continue  # left out silently, as the real list does
                out.append(item)
        out.sort(key=lambda i: i["volid"].lower())
        return out

    def archive_info(self, fn):
        """PVE::Storage::archive_info (ctime from the name, in local time)."""
        m = BACKUP_FILE_RE.match(os.path.basename(fn))
        if not m:
            return {}
        gtype, extension, comp = m.group(2), m.group(3), m.group(4)
        info = {"type": gtype, "format": extension.split(".")[0], "compression": comp, "filename": m.group(1)}
        s = re.match(rf"^(vzdump-{gtype}-([1-9][0-9]{{2,8}})-(\d{{4}})_(\d{{2}})_(\d{{2}})-(\d{{2}})_(\d{{2}})_(\d{{2}}))\.{re.escape(extension)}$",
                     os.path.basename(fn))
        if s:
            y, mo, d, h, mi, se = (int(x) for x in s.groups()[2:])
            info["ctime"] = int(time.mktime((y, mo, d, h, mi, se, 0, 0, -1)))
            info["vmid"] = int(s.group(2))
            info["logfilename"] = s.group(1) + ".log"
            info["notesfilename"] = m.group(1) + ".notes"
        return info

    def volume_info(self, node, sid, volume, query):
        """GET /nodes/{node}/storage/{storage}/content/{volume}."""
        self.storage_path_param(sid)
        errors = validate(query, {})
        if errors:
            raise ApiError(400, PARAM_FAILED, errors)
        self.node_check(node)
        volid, sid = self.real_volume_id(sid, volume)
        self.check_volume_access(None, volid)
        path, owner, vtype = self.volume_path(volid, node)
        if not os.path.exists(path):  # file_size_info warns, returns undef
            raise ApiError(500, f"volume_size_info on '{volid}' failed - no format")
        st = os.stat(path)
        if st.st_size == 0:
            raise ApiError(500, f"volume '{volid}' has size zero")
        out = {"path": path, "size": st.st_size, "used": st.st_blocks * 512, "format": "raw"}
        if vtype == "backup":
            notes = ""
            if os.path.isfile(path + ".notes"):
                with open(path + ".notes", encoding="utf-8", errors="replace") as f:
                    notes = f.read()
            out["notes"] = notes
            out["protected"] = 1 if os.path.exists(path + ".protected") else 0
        return out

    def volume_delete(self, node, sid, volume, params, user):
        """DELETE /nodes/{node}/storage/{storage}/content/{volume} -> UPID (imgdel)."""
        self.storage_path_param(sid)
        errors = validate(params, {"delay": {"type": "integer", "minimum": 1, "maximum": 30}})
        if errors:
            raise ApiError(400, PARAM_FAILED, errors)
        self.node_check(node)
        volid, sid = self.real_volume_id(sid, volume)
        path, owner, vtype = self.volume_path(volid, node)
        if vtype == "backup" and owner:
            self.check_path(f"/storage/{sid}", "Datastore.AllocateSpace")
            self.check(owner, "VM.Backup")
        else:
            self.check_path(f"/storage/{sid}", "Datastore.Allocate")
        if vtype != "backup":
            raise ApiError(501, "pve-simulator: deleting non-backup volumes is not modelled")
        task = self.open_task(node, "imgdel", f"{owner}@{sid}" if owner is not None else sid, user)
        volname = volid.split(":", 1)[1]

        def worker():
            self.storage_check_enabled(sid, node)
            rec = {"volid": volid, "path": path, "upid": task["upid"], "existed": os.path.exists(path)}
            if os.path.exists(path + ".protected"):
                self.end_task(task, f"cannot remove protected volume '{volname}' on '{sid}'")
                rec["result"] = task["exitstatus"]
            else:
                if not os.path.isfile(path):
                    self.tlog(task, f"disk image '{path}' does not exist")  # a plain warn()
                else:
                    os.unlink(path)
                self.tlog(task, f"Removed volume '{volid}'")
                info = self.archive_info(path)
                for k in ("logfilename", "notesfilename"):
                    aux = os.path.join(os.path.dirname(path), info[k]) if info.get(k) else None
                    if aux and os.path.exists(aux):
                        os.unlink(aux)
                for a in self.archives:
                    if a["path"] == path and not a.get("deleted_by") and not a.get("replaced_by"):
                        a["deleted_by"] = task["upid"]
                self.end_task(task, "OK")
                rec["result"] = "OK"
            self.archives_deleted.append(rec)

        def run():
            try:
                worker()
            except ApiError as e:
                self.end_task(task, e.message)
        self.schedule(task["start"] + self.delete_seconds, run)
        self.count_in_flight()
        if params.get("delay"):
            return Deferred(task["upid"], int(params["delay"]))
        return task["upid"]

    # ---- restore (qemu-server / pve-container create_vm) -----------------
    def read_archive(self, path):
        """The bytes a restore reads: their size, SHA-256 and the backup they are."""
        h = hashlib.sha256()
        n = 0
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
                n += len(b)
        digest = h.hexdigest()
        src = next((a for a in reversed(self.archives) if a["sha256"] == digest and a["size"] == n), None)
        return n, digest, src

    def new_guest(self, vmid, gtype, node):
        g = {"vmid": vmid, "type": gtype, "node": node, "name": f"VM {vmid}" if gtype == "qemu" else f"CT{vmid}",
             "status": "stopped", "template": 0, "lock": "create", "snapshot_feature": True, "snapshots": {}}
        self.guests[vmid] = g
        return g

    def restore(self, node, gtype, params, user):
        """POST /nodes/{node}/qemu (archive) or /nodes/{node}/lxc (restore=1)."""
        qemu = gtype == "qemu"
        if qemu:
            errors = validate(params, QEMU_RESTORE_SCHEMA, lambda k: re.match(r"^net\d+$", k))
        else:
            errors = validate(params, LXC_RESTORE_SCHEMA, lambda k: re.match(r"^(net|mp)\d+$", k))
        if errors:
            raise ApiError(400, PARAM_FAILED, errors)
        self.node_check(node)
        vmid = int(params["vmid"])
        archive = params.get("archive") if qemu else params.get("ostemplate")
        force = truthy(params.get("force"))
        if qemu and not archive:
            raise ApiError(501, "pve-simulator: creating a VM without 'archive' is not modelled (only restore is)")
        if not qemu and not truthy(params.get("restore")):
            raise ApiError(501, "pve-simulator: creating a container from a template is not modelled (only restore=1 is)")
        for k in ("pool", "ha-managed"):
            if params.get(k) and (k != "ha-managed" or truthy(params[k])):
                raise ApiError(501, f"pve-simulator: parameter '{k}' is not modelled")
        if any(re.match(r"^(rootfs|mp\d+)$", k) for k in params):
            raise ApiError(501, "pve-simulator: restoring with explicit rootfs/mount points is not modelled")
        existing = self.guests.get(vmid)
        same = existing is not None and existing["node"] == node and existing["type"] == gtype
        storage = params.get("storage")
        if qemu:
            if storage:
                self.check_path(f"/storage/{storage}", "Datastore.AllocateSpace")
            if truthy(params.get("start")):
                self.check(vmid, "VM.PowerMgmt")
            if not (self.has(vmid, "VM.Allocate") or (force and same and self.has(vmid, "VM.Backup"))):
                raise ApiError(403, "Permission check failed")
            if archive == "-":
                raise ApiError(500, "pipe requires cli environment")
            self.check_volume_access(vmid, archive, "backup")
        else:
            if not (same and force):
                self.check_vmid_unused(vmid)
            elif existing["status"] == "running":
                raise ApiError(500, "can't overwrite running container")
            if not (self.has(vmid, "VM.Allocate") or (force and same and self.has(vmid, "VM.Backup"))):
                raise ApiError(403, "Permission check failed")
            storage = storage or "local"
            if archive == "-":
                raise ApiError(500, "pipe requires cli environment")
            self.check_volume_access(vmid, archive, "backup")
            sc = self.storage_check_enabled(storage, node)
            if "rootdir" not in sc["content"]:
                raise ApiError(400, PARAM_FAILED, {"storage": f"storage '{storage}' does not support container directories"})
            self.check_path(f"/storage/{storage}", "Datastore.AllocateSpace")
        path = self.volume_path(archive, node)[0]
        kind = "VM" if qemu else "CT"
        emsg = f"unable to restore {kind} {vmid} -"
        # create_and_lock_config($vmid, $force)
        if existing is not None:
            if not (force and same):
                other = "VM" if existing["type"] == "qemu" else "CT"
                raise ApiError(500, f"{emsg} {other} {vmid} already exists on node '{existing['node']}'")
            if existing["lock"]:
                raise ApiError(500, f"{emsg} {kind} is locked ({existing['lock']})")
            existing["lock"] = "create"
            g = existing
        else:
            g = self.new_guest(vmid, gtype, node)
        task = self.open_task(node, "qmrestore" if qemu else "vzrestore", vmid, user)
        rec = {"upid": task["upid"], "type": gtype, "vmid": vmid, "node": node, "archive": archive,
               "path": path, "storage": storage, "size": None, "sha256": None, "source": None,
               "exitstatus": None}
        self.restores.append(rec)
        body = self.qmrestore(task, g, rec, params, existing is not None) if qemu else \
            self.vzrestore(task, g, rec, params, existing is not None)
        self.spawn(task, body)
        self.count_in_flight()
        return task["upid"]

    def check_vmid_unused(self, vmid):
        """PVE::Cluster::check_vmid_unused."""
        d = self.guests.get(vmid)
        if d is not None:
            kind = "VM" if d["type"] == "qemu" else "CT"
            raise ApiError(500, f"{kind} {vmid} already exists on node '{d['node']}'")

    def restore_done(self, task, rec, exitstatus):
        self.end_task(task, exitstatus)
        rec["exitstatus"] = exitstatus

    def qmrestore(self, task, g, rec, params, existed):
        """qemu-server's restore worker: restore_file_archive -> restore_vma_archive."""
        vmid, node, path = g["vmid"], g["node"], rec["path"]
        seconds = self.restore_seconds

        def fail(err, restored=False):
            g["lock"] = None  # remove_lock($vmid, 'create'); the config stays
            self.tlog(task, "error after data was restored, VM disks should be OK but config may require adaptions. "
                            f"VM {vmid} state is NOT cleaned up." if restored else
                            "error before or during data restore, some or all disks were not completely restored. "
                            f"VM {vmid} state is NOT cleaned up.")
            self.restore_done(task, rec, err)

        yield ("sleep", self.fail_seconds)
        if existed and g["status"] == "running":
            return fail(f"unable to restore VM {vmid} - vm is running")
        if truthy(params.get("live-restore")):
            return fail("live-restore is only compatible with backup images from a Proxmox Backup Server")
        info = self.archive_info(path)
        if not info:
            return fail(f"ERROR: couldn't determine archive info from '{path}'")
        if info["format"] == "tar":
            return fail(f"ERROR: file '{path}' does not look like a QemuServer vzdump backup")
        tmp = f"/var/tmp/vzdumptmp{self.pid}"
        comp = info["compression"]
        if comp:
            shown = f"{DECOMPRESSOR[comp]} {path} | vma extract -v -r {tmp}.fifo - {tmp}"
        else:
            shown = f"vma extract -v -r {tmp}.fifo {path} {tmp}"
        cmd = f"set -o pipefail && {shown}"
        self.tlog(task, f"restore vma archive: {shown}")
        if not os.path.isfile(path):
            self.tlog(task, f"{(DECOMPRESSOR[comp] if comp else 'vma').split()[0]}: {path}: No such file or directory")
            return fail(f"command '{cmd}' failed: exit code 1")
        rec["size"], rec["sha256"], src = self.read_archive(path)
        if src is None or src["type"] != "qemu":
            self.tlog(task, "vma: restore failed - wrong vma extent header chksum")
            return fail(f"command '{cmd}' failed: exit code 133")
        rec["source"] = {"volid": src["volid"], "vmid": src["vmid"], "upid": src["upid"]}
        target = rec["storage"] or src["disk_storage"]
        sc = self.storages.get(target)
        if sc is None:
            return fail(f"storage '{target}' does not exist")
        if "images" not in sc["content"]:
            return fail(f"Content type 'images' is not available on storage '{target}'")
        if not self.has_path(f"/storage/{target}", "Datastore.AllocateSpace"):
            return fail(f"Permission check failed (/storage/{target}, Datastore.AllocateSpace)")
        disk = 32 << 30
        self.tlog(task, "CFG: size: 512 name: qemu-server.conf")
        self.tlog(task, f"DEV: dev_id=1 size: {disk} devname: drive-scsi0")
        self.tlog(task, "CTIME: " + time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(src["written_at"])))
        if sc["type"] in PATH_STORAGE_TYPES:
            vol = f"{target}:{vmid}/vm-{vmid}-disk-0.raw"
            dev = os.path.join(self.storage_dir(target, node), "images", str(vmid), f"vm-{vmid}-disk-0.raw")
        else:
            vol = f"{target}:vm-{vmid}-disk-0"
            dev = f"/dev/pve/vm-{vmid}-disk-0"
            self.tlog(task, f'  Logical volume "vm-{vmid}-disk-0" created.')
        self.tlog(task, f"new volume ID is '{vol}'")
        self.tlog(task, f"map 'drive-scsi0' to '{dev}' (write zeros = 0)")
        for step in range(1, 5):
            yield ("sleep", seconds / 4)
            self.tlog(task, f"progress {step * 25}% (read {disk * step // 4} bytes, duration {int(self.t() - task['start'])} sec)")
        self.tlog(task, f"total bytes read {disk}, sparse bytes {disk - rec['size']} ({(disk - rec['size']) * 100 / disk:.2f}%)")
        self.tlog(task, "space reduction due to 4K zero blocks 0.41%")
        self.tlog(task, "rescan volumes...")
        g.update(name=params.get("name") or src["name"], disk_storage=target, lock=None)
        if src["template"]:
            self.tlog(task, "Convert to template.")
            g["template"] = 1
        if truthy(params.get("start")) and not g["template"]:
            self.tlog(task, "Execute autostart")
            g["status"] = "running"
        self.restore_done(task, rec, "OK")

    def vzrestore(self, task, g, rec, params, existed):
        """pve-container's create_vm worker with restore=1."""
        vmid, node, path, archive = g["vmid"], g["node"], rec["path"], rec["archive"]
        destroy_on_error = not existed

        def fail(err):
            if destroy_on_error:
                if self.guests.get(vmid) is g:
                    del self.guests[vmid]  # destroy_config
            else:
                g["lock"] = None
            self.restore_done(task, rec, f"unable to restore CT {vmid} - {err}")

        yield ("sleep", self.fail_seconds)
        if g["status"] == "running":
            return fail("can't overwrite running container")
        self.tlog(task, f"recovering backed-up configuration from '{archive}'")
        if not os.path.isfile(path):
            return fail(f"ERROR: file '{path}' does not exist")
        rec["size"], rec["sha256"], src = self.read_archive(path)
        if src is None or src["type"] != "lxc":
            return fail("ERROR: archive contains no configuration file")
        rec["source"] = {"volid": src["volid"], "vmid": src["vmid"], "upid": src["upid"]}
        destroy_on_error = True
        target = rec["storage"]
        if self.storages[target]["type"] in PATH_STORAGE_TYPES:
            self.tlog(task, "Formatting '%s', fmt=raw size=8589934592 preallocation=off"
                      % os.path.join(self.storage_dir(target, node), "images", str(vmid), f"vm-{vmid}-disk-0.raw"))
        else:
            self.tlog(task, f'  Logical volume "vm-{vmid}-disk-0" created.')
        self.tlog(task, "Creating filesystem with 2097152 4k blocks and 524288 inodes")
        yield ("sleep", self.restore_seconds / 2)
        self.tlog(task, f"restoring '{archive}' now..")
        self.tlog(task, f"extracting archive '{path}'")
        yield ("sleep", self.restore_seconds / 2)
        secs = max(self.restore_seconds, 0.001)
        self.tlog(task, f"Total bytes read: {rec['size']} ({rec['size'] / 1048576:.1f}MiB, {rec['size'] / 1048576 / secs:.1f}MiB/s)")
        self.tlog(task, "merging backed-up and given configuration..")
        g.update(name=params.get("hostname") or src["name"], disk_storage=target, lock=None)
        if src["template"]:
            self.tlog(task, "Convert restored container to template...")
            g["template"] = 1
        if truthy(params.get("start")) and not g["template"]:
            g["status"] = "running"
        self.restore_done(task, rec, "OK")

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
                if isinstance(data, Deferred):
                    data = self.wait_for(data)
                if isinstance(data, tuple):
                    self.answer(200, "OK", {"data": data[0], "total": data[1]})
                else:
                    self.answer(200, "OK", {"data": data})
            except ApiError as e:
                out = {"data": None, "message": e.message + "\n"}
                if e.errors:
                    out["errors"] = e.errors
                self.answer(e.status, e.message, out)

        def wait_for(self, d):
            """`delay`: wait up to d.delay s for the task; null if it ended well,
            its status as an error if not, else its UPID (Content.pm delete)."""
            deadline = time.time() + d.delay
            while True:
                with sim.lock:
                    if sim.advance():
                        sim.write_stats()
                    t = sim.tasks[d.upid]
                    if not sim.running(t):
                        st = t["exitstatus"]
                        if st == "OK" or st.startswith("WARNINGS: "):
                            return None
                        raise ApiError(500, st)
                if time.time() >= deadline:
                    return d.upid
                time.sleep(0.05)

        def route(self, method, parts, query, body):
            if parts[:2] != ["api2", "json"]:
                raise ApiError(501, f"Unexpected content for method '{method}'")
            p = parts[2:]
            user = sim.authenticate(self.headers.get("Authorization"))
            if method == "GET" and p == ["nodes"]:
                return sim.get_nodes()
            if method == "GET" and p == ["cluster", "resources"]:
                return sim.cluster_resources(query)
            if method == "GET" and len(p) == 2 and p[0] == "storage":
                return sim.read_storage(p[1])
            if len(p) >= 3 and p[0] == "nodes":
                node = p[1]
                if p[2] in ("qemu", "lxc"):
                    gtype = p[2]
                    if len(p) == 3 and method == "GET":
                        return sim.node_guests(node, gtype)
                    if len(p) == 3 and method == "POST":
                        return sim.restore(node, gtype, body, user)
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
                if p[2] == "vzdump" and len(p) == 3 and method == "POST":
                    return sim.vzdump(node, body, user)
                if p[2] == "storage":
                    if len(p) == 3 and method == "GET":
                        return sim.node_storages(node, query)
                    if len(p) >= 5 and p[4] == "content":
                        if len(p) == 5 and method == "GET":
                            return sim.list_content(node, p[3], query)
                        if len(p) == 6 and method == "GET":
                            return sim.volume_info(node, p[3], p[5], query)
                        if len(p) == 6 and method == "DELETE":
                            return sim.volume_delete(node, p[3], p[5], body, user)
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
