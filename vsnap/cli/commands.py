"""The command tree of `vsnap`: one sub-command per API resource, one verb per action. Each verb
sends exactly the request the API contract (vsnap-api-1.0) describes and shows the answer as a
table, as key: value lines, or with --json exactly as the API sent it (but `pool show --json`:
every pool in full, the CLI's own answer; see pool_show)."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from decimal import Decimal, InvalidOperation

from .client import ApiError, Client, Result
from .output import Progress, detail, human_size, human_time, table

INITIALIZING, READY = "Initializing", "Ready"
RUNNING_SESSION = ("PENDING", "ACTIVE")


class UsageError(Exception):
    """A command line the API would not understand: reported like argparse's errors (exit 2)."""


class Context:
    def __init__(self, client: Client, args, *, out=None, err=None, clock=None, prompt=None):
        self.client = client
        self.args = args
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.clock = clock or time
        self.prompt = prompt or getpass.getpass
        self.json = bool(getattr(args, "json", False))

    def print(self, text: str) -> None:
        if text:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()

    def raw(self, result: Result) -> None:
        self.print(result.text if result.text.strip() else "{}")

    def show(self, result: Result, render) -> None:
        """--json: the API's answer exactly; otherwise render(data) for people."""
        self.raw(result) if self.json else self.print(render(result.data))

    def done(self, result: Result, message: str) -> None:
        self.raw(result) if self.json else self.print(message)

    def error(self, message: str) -> None:
        self.err.write(f"error: {message}\n")
        self.err.flush()


# -- columns of the tables: (HEADER, key or function, formatter) -----------------------------
def pct(value) -> str:
    return "-" if value in (None, "") else f"{value}%"


def scan_summary(scan) -> str:
    """A pool's scan in a few words: 'resilver 45.10%' while it runs, else how it ended."""
    if not scan:
        return "-"
    if scan.get("state") == "scanning":
        percent = scan.get("percent")
        return f"{scan.get('function')} {percent:.2f}%" if percent is not None else f"{scan.get('function')} running"
    return f"{scan.get('function')} {scan.get('state')}"


POOL = [("ID", "id"), ("NAME", "name"), ("TYPE", "pool_type"), ("STATUS", "status"),
        ("HEALTH", "health", pct), ("SIZE", "size_total", human_size), ("USED", "size_used", human_size),
        ("FREE", "size_free", human_size), ("SCAN", "scan", scan_summary)]
HEALTHY_DEVICE = ("ONLINE", "AVAIL", "INUSE")
PARTS = {"old": "being replaced", "new": "replacing it", "spare": "hot spare standing in"}


def device_note(device: dict) -> str:
    notes = []
    if device.get("state") not in HEALTHY_DEVICE:
        notes.append("FAILED" if device.get("state") in ("FAULTED", "UNAVAIL", "REMOVED")
                     else str(device.get("state")).lower())
    if device.get("replacing"):
        notes.append(PARTS.get(device["replacing"], device["replacing"]))
    if device.get("role") == "spare":
        notes.append("spare in use" if device.get("state") == "INUSE" else "spare")
    return ", ".join(notes) or "-"


DEVICE = [("PATH", "path"), ("GROUP", "group"), ("ROLE", "role"), ("STATE", "state"), ("NOTE", device_note)]


def scan_detail(scan) -> str:
    if not scan:
        return "none yet"
    what, state = scan.get("function"), scan.get("state")
    if state == "scanning":
        percent = scan.get("percent")
        text = f"{what} in progress, " + (f"{percent:.2f}% done" if percent is not None else "progress unknown")
        end = scan.get("estimated_end")
        return text + (f", estimated end {human_time(end)}" if end else ", no estimated end")
    text = f"{what} {state}"
    if scan.get("time_ended"):
        text += f" {human_time(scan['time_ended'])}"
    if scan.get("errors") is not None:
        text += f" with {scan['errors']} errors"
    return text


def pool_detail(pool: dict) -> str:
    """One pool for people: its fields as key: value lines, then its scan and its devices
    with their states (failed ones and spares said so)."""
    text = detail({k: v for k, v in pool.items() if k not in ("scan", "disk_states")})
    if "scan" in pool:
        text += f"\nscan: {scan_detail(pool['scan'])}"
    if pool.get("disk_states"):
        text += "\ndevices:\n" + "\n".join("  " + line for line in table(pool["disk_states"], DEVICE).splitlines())
    return text
DISK = [("NAME", "name"), ("UUID", "uuid"), ("SIZE", "size", human_size), ("USED_AS", "used_as"),
        ("POOL", "pool"), ("TYPE", "type"), ("VENDOR", "vendor"), ("MODEL", "model")]
VOLUME = [("ID", "id"), ("NAME", "name"), ("TYPE", "volume_type"), ("POOL_ID", "pool_id"),
          ("CLONE", "is_clone"), ("SIZE", "size_total", human_size), ("USED", "size_used", human_size),
          ("FREE", "size_free", human_size), ("CREATED", "time_created", human_time)]
SNAPSHOT = [("ID", "id"), ("NAME", "name"), ("VOLUME_ID", "parent_id"),
            ("CREATED", "time_created", human_time)]
SHARE = [("ID", "id"), ("NAME", "name"), ("TYPE", "share_type"), ("VOLUME_ID", "vol_id"),
         ("CREATED", "time_created", human_time)]
HOST = [("ID", "id"), ("NAME", "name"), ("IQNS", "iqns"), ("CREATED", "time_created", human_time)]
PARTNER = [("ID", "id"), ("ADDRESS", "address"), ("API_PORT", "api_port"), ("SSH_PORT", "ssh_port"),
           ("CREATED", "time_created", human_time)]
RELATIONSHIP = [("ID", "id"), ("ROLE", "local_role"), ("VOLUME", "local_vol_name"),
                ("PARTNER_ID", "partner_id"), ("REMOTE_VOLUME", "remote_vol_name"),
                ("LAST_SYNC", "last_sync_status"), ("LAST_SUCCESS_SNAP", "last_success_snap_id")]
SESSION = [("ID", "id"), ("REL_ID", "rel_id"), ("STATUS", "status"), ("SENT", "size_sent", human_size),
           ("SNAPSHOT", "local_snap_name"), ("QUEUED", "time_queued", human_time),
           ("ENDED", "time_ended", human_time), ("MESSAGE", "message")]
USER = [("NAME", "name"), ("UID", "uid"), ("GID", "gid"), ("ROLE", "role")]
NETWORK = [("ID", "id"), ("NAME", "name"), ("HW_ADDR", "hw_addr"), ("IPV4", "ip4_addrs"),
           ("IPV6", "ip6_addrs"), ("SERVICES", "services")]
TARGET = [("TYPE", "type"), ("WWN", "wwn"), ("HOST_ID", "host_id")]
AUDIT = [("ID", "id"), ("TIME", "time", human_time), ("USER", "user"), ("ADDRESS", "address"),
         ("METHOD", "method"), ("PATH", "path"), ("STATUS", "status"), ("MESSAGE", "message"),
         ("REQUEST_ID", "request_id")]


def listing(key: str, columns):
    return lambda data: table(data.get(key) or [], columns)


# -- argument types and lookups --------------------------------------------------------------
SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(?:i?b)?\s*", re.I)


def rate_arg(text: str) -> str | None:
    """A size_arg per second, or 'none' (no limit)."""
    return None if text.strip().lower() == "none" else size_arg(text)


def size_arg(text: str) -> str:
    """'100G', '1.5T', '512K' (binary units) or plain bytes -> a decimal string of bytes."""
    match = SIZE_RE.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a number with K, M, G, T "
                                         "or P, e.g. 100G, 1.5T)")
    try:
        number = Decimal(match[1])
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    unit = match[2].upper()
    number *= 1024 ** ("KMGTPE".index(unit) + 1 if unit else 0)
    if number != number.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes")
    return str(int(number))


def split_list(values) -> list[str]:
    """Repeated options and comma-separated values alike: --disk a --disk b,c -> [a, b, c]."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def disk_uuids(ctx: Context, values) -> list[str]:
    """Disks by uuid (as the API wants them) or by device path, looked up in GET /api/disk."""
    items = split_list(values)
    if any(item.startswith("/") for item in items):
        disks = ctx.client.get("/api/disk").data.get("disks") or []
        found = []
        for item in items:
            if not item.startswith("/"):
                found.append(item)
                continue
            match = [d for d in disks if d.get("name") == item
                     or os.path.realpath(d.get("name") or "") == os.path.realpath(item)]
            if not match:
                raise UsageError(f"no disk {item} (see `vsnap disk show`)")
            found.append(match[0]["uuid"])
        items = found
    return items


def selector(p, noun: str, *, by_name: bool = True, required: bool = True) -> None:
    """The object a verb acts on: positional id, --id, or (where the API looks names up) --name."""
    p.add_argument("ident", nargs="?", metavar="ID", help=f"the {noun}'s id")
    p.add_argument("--id", dest="id_flag", metavar="ID", help=f"the {noun}'s id (same as the positional ID)")
    if by_name:
        p.add_argument("--name", dest="by_name", metavar="NAME", help=f"the {noun}'s name")
    p.set_defaults(_noun=noun, _required=required)


def chosen(a) -> tuple[str | None, str | None]:
    ids = {x for x in (a.ident, a.id_flag) if x}
    name = getattr(a, "by_name", None)
    if len(ids) > 1:
        raise UsageError(f"two different {a._noun} ids given")
    if ids and name:
        raise UsageError(f"give the {a._noun}'s id or its --name, not both")
    return (ids.pop() if ids else None), name


def target_id(ctx: Context, a, resource: str) -> str:
    """The id of the object named on the command line; a name is looked up through the API."""
    ident, name = chosen(a)
    if ident:
        return ident
    if name:
        return str(ctx.client.get(f"/api/{resource}", {"name": name}).data["id"])
    raise UsageError(f"which {a._noun}? give its ID" + (" or --name" if hasattr(a, "by_name") else ""))


def show(resource: str, key: str, columns, filters: dict | None = None):
    """GET /api/<resource>/<id> or ?name= for one object's details, else the (filtered) list."""
    def run(ctx: Context, a):
        ident, name = chosen(a) if hasattr(a, "ident") else (None, None)
        if ident:
            return ctx.show(ctx.client.get(f"/api/{resource}/{ident}"), detail)
        if name:
            return ctx.show(ctx.client.get(f"/api/{resource}", {"name": name}), detail)
        params = {param: getattr(a, dest) for dest, param in (filters or {}).items()
                  if getattr(a, dest, None) is not None}
        ctx.show(ctx.client.get(f"/api/{resource}", params or None), listing(key, columns))
    return run


# A server before encrypted pools did not say: its pools were not encrypted (what `--json pool
# show` prints, as monitoring reads it, always has `encryption`).
ENCRYPTION = {"enabled": False}


def _pool_in_full(pool: dict) -> dict:
    return {**pool, "encryption": pool.get("encryption", dict(ENCRYPTION))}


def pool_show(ctx: Context, a):
    """Pools for people: the list's table, or one pool's details. With --json every pool in
    full, as monitoring tools (IBM's sppmon runs `vsnap --json pool show`) read them: each
    pool's details (GET /api/pool/<id>) with `encryption`, under {"pools": [...], "total": N}:
    the CLI's own answer, not one the API gives."""
    ident, name = chosen(a)
    if ident or name:
        result = ctx.client.get(f"/api/pool/{ident}") if ident else ctx.client.get("/api/pool", {"name": name})
        return ctx.print(json.dumps(_pool_in_full(result.data))) if ctx.json else ctx.print(pool_detail(result.data))
    listed = ctx.client.get("/api/pool")
    if not ctx.json:
        return ctx.print(listing("pools", POOL)(listed.data))
    pools = []
    for summary in listed.data.get("pools") or []:
        try:
            pools.append(_pool_in_full(ctx.client.get(f"/api/pool/{summary['id']}").data))
        except ApiError as exc:
            if exc.status != 404:  # deleted since the list was read: not there any more
                raise
    ctx.print(json.dumps({"pools": pools, "total": len(pools)}))


def delete(resource: str):
    def run(ctx: Context, a):
        ident = target_id(ctx, a, resource)
        ctx.done(ctx.client.delete(f"/api/{resource}/{ident}"), f"deleted {a._noun} {ident}")
    return run


def put_fields(body: dict, a, fields: dict) -> dict:
    for dest, key in fields.items():
        value = getattr(a, dest, None)
        if value is not None:
            body[key] = value
    return body


# -- system, disks, users, network, targets, audit --------------------------------------------
def system_show(ctx, a):
    ctx.show(ctx.client.get("/api/system"), detail)


def system_stats(ctx, a):
    ctx.show(ctx.client.get("/api/system/stats"), detail)


def system_init(ctx, a):
    body = {"action": "init", "async": bool(a.run_async or a.wait), "skip_pool": a.skip_pool}
    put_fields(body, a, {"multipool": "multipool"})  # only when asked: else it stays as it is
    result = ctx.client.post("/api/system", body)
    if not a.wait:
        return ctx.show(result, detail)
    progress = Progress(ctx.err, "init", clock=ctx.clock)
    try:
        while result.data.get("init_status") == INITIALIZING:
            progress.update(INITIALIZING)
            ctx.clock.sleep(a.interval)
            result = ctx.client.get("/api/system")
        status = result.data.get("init_status")
        progress.update(status, done=True)
    except KeyboardInterrupt:
        progress.close()
        ctx.err.write("stopped waiting; init goes on (`vsnap system show` to follow it)\n")
        return 130
    finally:
        progress.close()
    ctx.show(result, detail)
    if status != READY:
        ctx.error(f"init ended {status}: {result.data.get('message') or 'no message'}")
        return 1
    return 0


def disk_rescan(ctx, a):
    ctx.done(ctx.client.post("/api/disk", {"action": "rescan"}), "disks rescanned")


def network_update(ctx, a):
    services = split_list(a.services)
    if not services:
        raise UsageError("--services needs at least one service (all, mgmt, nfs, smb, iscsi, repl)")
    ctx.show(ctx.client.put(f"/api/network/{a.ident}", {"services": services}), detail)


def audit_show(ctx, a):
    params = put_fields({}, a, {"limit": "limit", "by_user": "user"})
    ctx.show(ctx.client.get("/api/audit", params or None), listing("events", AUDIT))


# -- pools --------------------------------------------------------------------------------------
POOL_FLAGS = {"compression": "compression", "deduplication": "deduplication", "syncwrite": "syncwrite"}


def pool_create(ctx, a):
    body = {"name": a.name, "pool_type": a.pool_type}
    if a.disk:
        body["disk_list"] = disk_uuids(ctx, a.disk)
    put_fields(body, a, {**POOL_FLAGS, "diskgroup_size": "diskgroup_size"})
    if getattr(a, "encrypted", False):
        body["encryption"] = {"enabled": True}
    ctx.show(ctx.client.post("/api/pool", body), pool_detail)


def pool_update(ctx, a):
    body = put_fields({}, a, {"new_name": "name", **POOL_FLAGS})
    if not body:
        raise UsageError("nothing to change: give --new-name, --[no-]compression, --[no-]dedup or --[no-]syncwrite")
    ident = target_id(ctx, a, "pool")
    ctx.show(ctx.client.put(f"/api/pool/{ident}", body), pool_detail)


def pool_action(action: str, disks: str | None):
    """disks: None (no disks), 'optional'/'required' (disk_list), 'one' (disk)."""
    def run(ctx, a):
        body = {"action": action}
        if disks == "one":
            uuids = disk_uuids(ctx, [a.disk])
            if len(uuids) != 1:
                raise UsageError("--disk takes one disk here")
            body["disk"] = uuids[0]
        elif disks and a.disk:
            body["disk_list"] = disk_uuids(ctx, a.disk)
        ident = target_id(ctx, a, "pool")
        ctx.show(ctx.client.post(f"/api/pool/{ident}", body), pool_detail)
    return run


def pool_replace(ctx, a):
    """Replace a device of the pool (its path, as `pool show` lists it) by an unused disk."""
    new = disk_uuids(ctx, [a.new_disk])
    if len(new) != 1:
        raise UsageError("--new-disk takes one disk")
    ident = target_id(ctx, a, "pool")
    ctx.show(ctx.client.post(f"/api/pool/{ident}", {"action": "replace", "disk": a.disk, "disk_list": new}),
             pool_detail)


# -- volumes, snapshots, shares ---------------------------------------------------------------
def volume_create(ctx, a):
    body = {"name": a.name}
    if a.snapshot:
        if a.volume_type or a.pool or a.parent or a.path or a.size or a.block_size:
            raise UsageError("a clone (--snapshot) takes only a name: its type, pool and size are the snapshot's")
        body["snapshot_id"] = a.snapshot
    else:
        kind = a.volume_type or "filesystem"
        body["volume_type"] = kind
        if kind == "filebackedlun":
            if not (a.parent and a.path):
                raise UsageError("a filebackedlun needs --parent VOLUME_ID and --path PATH")
            body.update(parent_id=a.parent, parent_path=a.path)
        else:
            if not a.pool:
                raise UsageError(f"a {kind} needs --pool POOL_ID")
            body["pool_id"] = a.pool
            put_fields(body, a, {"size": "size_total", "block_size": "size_block"})
    ctx.show(ctx.client.post("/api/volume", body), detail)


def volume_update(ctx, a):
    body = put_fields({}, a, {"new_name": "name", "size": "size_total"})
    if a.no_limit:
        if "size_total" in body:
            raise UsageError("give --size or --no-limit, not both")
        body["size_total"] = None
    if not body:
        raise UsageError("nothing to change: give --new-name, --size or --no-limit")
    ident = target_id(ctx, a, "volume")
    ctx.show(ctx.client.put(f"/api/volume/{ident}", body), detail)


def volume_map(ctx, a):
    ident = target_id(ctx, a, "volume")
    ctx.show(ctx.client.post(f"/api/volume/{ident}/map", {"host_id": a.host}), detail)


def snapshot_create(ctx, a):
    body = {"name": a.name} if a.name else {}
    ctx.show(ctx.client.post(f"/api/volume/{a.volume}/snapshot", body), detail)


def share_options(a, current: dict | None = None) -> dict | None:
    options = dict(current or {})
    if a.read_only is not None:
        options["read_only"] = a.read_only
    if a.allow:
        options["allowed_hosts"] = split_list(a.allow)
    if getattr(a, "no_hosts", False):
        options["allowed_hosts"] = []
    return options or None


def share_create(ctx, a):
    body = {"share_type": a.share_type}
    options = share_options(a)
    if options is not None:
        body["share_options"] = options
    ctx.show(ctx.client.post(f"/api/volume/{a.volume}/share", body), detail)


def share_of(ctx, a) -> dict:
    """The share named by its id, or by its volume (--volume)."""
    ident, _ = chosen(a)
    if ident and a.volume:
        raise UsageError("give the share's id or --volume, not both")
    if a.volume:
        share_id = ctx.client.get(f"/api/volume/{a.volume}").data.get("share_id")
        if not share_id:
            raise UsageError(f"volume {a.volume} has no share")
        ident = share_id
    if not ident:
        raise UsageError("which share? give its ID or --volume VOLUME_ID")
    return ctx.client.get(f"/api/share/{ident}").data


def share_update(ctx, a):
    """The API updates a share through its volume, with the whole body (spec 9.3): the current
    share is read, the changes applied, and type and options sent back."""
    if a.allow and a.no_hosts:
        raise UsageError("give --allow or --no-hosts, not both")
    if a.share_type is None and a.read_only is None and not a.allow and not a.no_hosts:
        raise UsageError("nothing to change: give --type, --read-only/--read-write, --allow or --no-hosts")
    current = share_of(ctx, a)
    share_type = a.share_type or current.get("share_type")
    body = {"share_type": share_type}
    keep = current.get("share_options") if current.get("share_type") == share_type else None
    options = share_options(a, keep)
    if options is not None or share_type == "nfs":
        body["share_options"] = options or {}
    ctx.show(ctx.client.put(f"/api/volume/{current['vol_id']}/share", body), detail)


def share_delete(ctx, a):
    ident, _ = chosen(a)
    if ident and a.volume:
        raise UsageError("give the share's id or --volume, not both")
    if a.volume:
        return ctx.done(ctx.client.delete(f"/api/volume/{a.volume}/share"), f"deleted the share of volume {a.volume}")
    if not ident:
        raise UsageError("which share? give its ID or --volume VOLUME_ID")
    ctx.done(ctx.client.delete(f"/api/share/{ident}"), f"deleted share {ident}")


# -- hosts ----------------------------------------------------------------------------------
def host_create(ctx, a):
    body = {"name": a.name}
    if a.iqn:
        body["iqns"] = split_list(a.iqn)
    ctx.show(ctx.client.post("/api/host", body), detail)


def host_update(ctx, a):
    body = put_fields({}, a, {"new_name": "name"})
    if a.iqn and a.no_iqns:
        raise UsageError("give --iqn or --no-iqns, not both")
    if a.iqn:
        body["iqns"] = split_list(a.iqn)
    if a.no_iqns:
        body["iqns"] = []
    if not body:
        raise UsageError("nothing to change: give --new-name, --iqn or --no-iqns")
    ident = target_id(ctx, a, "host")
    ctx.show(ctx.client.put(f"/api/host/{ident}", body), detail)


def host_action(action: str):
    def run(ctx, a):
        ident = target_id(ctx, a, "host")
        result = ctx.client.post(f"/api/host/{ident}", {"action": action, "vol_id": a.volume})
        if action == "map":
            return ctx.show(result, detail)
        ctx.done(result, f"unmapped volume {a.volume} from host {ident}")
    return run


# -- replication ------------------------------------------------------------------------------
def partner_create(ctx, a):
    password = a.remote_password or os.environ.get("VSNAP_REMOTE_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise UsageError("the partner's password: set VSNAP_REMOTE_PASSWORD (or --remote-password)")
        password = ctx.prompt(f"Password of {a.remote_user} on {a.address}: ")
    body = {"remote_addr": a.address, "remote_user": a.remote_user, "remote_pass": password}
    put_fields(body, a, {"local_addr": "local_addr", "local_api_port": "local_api_port",
                         "remote_api_port": "remote_api_port", "local_ssh_port": "local_ssh_port",
                         "remote_ssh_port": "remote_ssh_port"})
    ctx.show(ctx.client.post("/api/partner", body), detail)


def relationship_create(ctx, a):
    body = {"partner_id": a.partner}
    put_fields(body, a, {"remote_pool": "remote_pool_id", "remote_name": "remote_vol_name", "max_rate": "max_rate"})
    if a.reuse:
        body["reuse"] = True
    ctx.show(ctx.client.post(f"/api/volume/{a.volume}/relationship", body), detail)


def relationship_update(ctx, a):
    ctx.show(ctx.client.put(f"/api/relationship/{a.ident}", {"max_rate": a.max_rate}), detail)


def relationship_show(ctx, a):
    if a.ident and (a.volume or a.volume_name):
        raise UsageError("give a relationship ID or a volume, not both")
    if a.ident:
        return ctx.show(ctx.client.get(f"/api/relationship/{a.ident}"), detail)
    if a.volume and a.volume_name:
        raise UsageError("give --volume or --volume-name, not both")
    if a.volume:
        result = ctx.client.get(f"/api/volume/{a.volume}/relationship")
    else:
        result = ctx.client.get("/api/relationship", {"vol_name": a.volume_name} if a.volume_name else None)
    ctx.show(result, listing("relationships", RELATIONSHIP))


def relationship_delete(ctx, a):
    params = {"preserve_replica": "true"} if a.preserve_replica else None
    ctx.done(ctx.client.delete(f"/api/relationship/{a.ident}", params), f"deleted relationship {a.ident}")


def session_start(ctx, a):
    body = put_fields({}, a, {"snapshot": "snap_id", "remote_snap_name": "remote_snap_name"})
    if a.rollback_replica:
        body["rollback_replica"] = True
    result = ctx.client.post(f"/api/relationship/{a.ident}/session", body)
    if not a.wait:
        return ctx.show(result, detail)
    return follow_session(ctx, result, a.interval)


def session_wait(ctx, a):
    return follow_session(ctx, ctx.client.get(f"/api/session/{a.ident}"), a.interval)


def follow_session(ctx, result: Result, interval: float) -> int:
    """Polls GET /api/session/<id> until the session ends; progress on stderr, the final
    session on stdout. FAILED: its message as the error, exit 1."""
    session = result.data
    sid = session.get("id")
    progress = Progress(ctx.err, f"session {sid}", clock=ctx.clock)
    try:
        while session.get("status") in RUNNING_SESSION:
            progress.update(session["status"], session.get("size_sent"))
            ctx.clock.sleep(interval)
            result = ctx.client.get(f"/api/session/{sid}")
            session = result.data
        progress.update(session.get("status"), session.get("size_sent"), done=True)
    except KeyboardInterrupt:
        progress.close()
        ctx.err.write(f"stopped waiting; session {sid} goes on (`vsnap session wait {sid}` to follow it, "
                      f"`vsnap session cancel {sid}` to stop it)\n")
        return 130
    finally:
        progress.close()
    ctx.show(result, detail)
    if session.get("status") != "COMPLETED":
        ctx.error(f"session {sid} {session.get('status')}: {session.get('message') or 'no message'}")
        return 1
    return 0


def session_cancel(ctx, a):
    ctx.show(ctx.client.post(f"/api/session/{a.ident}", {"action": "cancel"}), detail)


__all__ = ["ApiError", "Context", "UsageError"]
