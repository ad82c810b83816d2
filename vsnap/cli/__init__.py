"""`vsnap`: the appliance's API from the command line.

    vsnap [connection options] [--json] RESOURCE VERB [options]

Tables for people by default; --json prints the API's JSON exactly as it answered. Exit codes:
0 success, 1 the API answered with an error (or a waited-for session or init failed),
2 usage or local configuration error, 3 no connection (refused, timed out, TLS check failed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from . import commands as c
from . import keys
from .client import ApiError, Client, ConfigError, ConnectionFailure, RequestsTransport, tls_settings
from .settings import DEFAULT_CONFIG, resolve

EPILOG = f"""\
connection (each from the first place that has it: flag, environment, config file):
  url       --url, VSNAP_URL, url=       default https://127.0.0.1:$VSNAP_PORT (8900)
  user      --user, VSNAP_USER, user=
  password  --password, VSNAP_PASSWORD, password=   (asked for on a terminal when missing)
  ca        --ca, VSNAP_CA, ca=          default $VSNAP_STATE/tls/vsnap.crt (/var/lib/vsnap)
The config file is {DEFAULT_CONFIG} or $VSNAP_CLI_CONFIG, INI with a [vsnap] section, and must be
readable by its owner only (chmod 600). A password in it is used only with its user.

exit codes: 0 ok, 1 API error or failed session/init, 2 usage or configuration error,
3 connection or TLS failure, 130 interrupted.

examples:
  vsnap pool show
  vsnap --json pool show --name vpool1
  vsnap volume create vm_backups --pool 1 --size 100G
  vsnap session start <relationship-id> --wait
  vsnap key export vpool1 /root/vpool1.key     (as root, on the appliance: no connection used)
Every resource and verb has --help."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsnap", description="Manage the vsnap appliance through its API.",
                                     epilog=EPILOG, formatter_class=Formatter)
    g = parser.add_argument_group("connection")
    g.add_argument("--url", help="the API, e.g. https://appliance:8900 (default https://127.0.0.1:8900)")
    g.add_argument("-u", "--user", help="account in the vsnap group")
    g.add_argument("-p", "--password", help="DISCOURAGED: other local users can see it in `ps`; "
                                            "use VSNAP_PASSWORD, the config file or the prompt")
    g.add_argument("--ca", metavar="FILE", help="CA file for the server's certificate (default: the "
                                                "appliance's own, $VSNAP_STATE/tls/vsnap.crt)")
    g.add_argument("--insecure", action="store_true",
                   help="do not check the server's certificate (warns; anyone in the path can read "
                        "the password)")
    g.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                   help="how long to wait for an answer (default 600)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer exactly")
    try:
        from importlib.metadata import version
        parser.add_argument("--version", action="version", version=f"vsnap {version('vsnap')}")
    except Exception:
        pass

    resources = parser.add_subparsers(dest="resource", metavar="RESOURCE", required=True)

    def resource(name, help_):
        p = resources.add_parser(name, help=help_, description=help_, formatter_class=Formatter)
        return p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(group, name, func, help_, description=None):
        p = group.add_parser(name, help=help_, description=description or help_, formatter_class=Formatter)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the API's JSON answer exactly")
        p.set_defaults(func=func, _parser=p)
        return p

    def wait_options(p, what):
        p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                       help=f"seconds between polls of the {what} (default 1)")

    def bool_flag(p, name, help_, dest=None, aliases=()):
        p.add_argument(f"--{name}", *aliases, dest=dest or name.replace("-", "_"), default=None,
                       action=argparse.BooleanOptionalAction, help=help_)

    # system
    r = resource("system", "appliance info, initialisation and statistics")
    verb(r, "show", c.system_show, "show identity, versions and init status (GET /api/system)")
    p = verb(r, "init", c.system_init, "initialise the appliance (POST /api/system)",
             "Initialise the appliance: makes the default pool from every unused disk unless "
             "--skip-pool. --multipool allows more than one pool, --no-multipool only one; "
             "without either, the setting stays as it is.")
    bool_flag(p, "multipool", "allow more than one pool (--no-multipool: only one); "
                              "default: left as it is")
    p.add_argument("--skip-pool", action="store_true", help="do not make the default pool")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--async", dest="run_async", action="store_true",
                   help="return at once; follow with `vsnap system show`")
    m.add_argument("--wait", action="store_true",
                   help="start in the background and show progress until init ends (exit 1 if it fails)")
    wait_options(p, "system")
    verb(r, "stats", c.system_stats, "show ZFS cache (ARC) and dedup table sizes (GET /api/system/stats)")

    # disks
    r = resource("disk", "disks the appliance may use")
    p = verb(r, "show", c.show("disk", "disks", c.DISK, {"used_as": "used_as"}), "list disks (GET /api/disk)")
    p.add_argument("--used-as", metavar="USE", help="only disks with this use: unused, data, log, cache, spare, ...")
    verb(r, "rescan", c.disk_rescan, "rescan for added or removed disks (POST /api/disk)")

    # pools
    r = resource("pool", "storage pools")
    p = verb(r, "create", c.pool_create, "create a pool (POST /api/pool)")
    p.add_argument("name", help="pool name")
    p.add_argument("--type", dest="pool_type", required=True, choices=("raid0", "raid5", "raid6"),
                   help="raid0 stripes; raid5/raid6 make raidz1/raidz2 groups")
    p.add_argument("--disk", action="append", metavar="DISK",
                   help="disk uuid or device path; repeat or separate with commas (default: every unused disk)")
    p.add_argument("--diskgroup-size", type=int, metavar="N", help="most disks per raid5/raid6 group (default 8)")
    bool_flag(p, "compression", "compression (default on)")
    bool_flag(p, "dedup", "deduplication (default off)", dest="deduplication")
    bool_flag(p, "syncwrite", "synchronous writes (default on)")
    p.add_argument("--encrypted", action="store_true",
                   help="encrypt the pool at rest (OpenZFS only; see `vsnap key export`)")
    p = verb(r, "show", c.pool_show, "list pools, or show one pool's details (GET /api/pool); with --json "
                                     "every pool in full (GET /api/pool/<id> each, with encryption)")
    c.selector(p, "pool", required=False)
    p = verb(r, "update", c.pool_update, "rename a pool or change its settings (PUT /api/pool/<id>)")
    c.selector(p, "pool")
    p.add_argument("--new-name", metavar="NAME", help="rename the pool")
    bool_flag(p, "compression", "compression")
    bool_flag(p, "dedup", "deduplication", dest="deduplication")
    bool_flag(p, "syncwrite", "synchronous writes")
    for action, disks, help_ in (
            ("expand", "optional", "add data disks (default: every unused disk)"),
            ("addlog", "required", "add log (ZIL) disks; two or more are mirrored"),
            ("removelog", None, "remove the log disks"),
            ("addcache", "one", "add a cache (L2ARC) disk"),
            ("removecache", None, "remove the cache disk"),
            ("addspare", "required", "add hot spare disks"),
            ("removespare", "required", "remove hot spare disks"),
            ("scrub", None, "start a scrub: ZFS reads and checks every block (follow it with pool show)"),
            ("scrub_stop", None, "stop the running scrub")):
        p = verb(r, action, c.pool_action(action, disks), f"{help_} (POST /api/pool/<id> action {action})")
        c.selector(p, "pool")
        if disks == "one":
            p.add_argument("--disk", required=True, metavar="DISK", help="disk uuid or device path")
        elif disks:
            p.add_argument("--disk", action="append", required=disks == "required", metavar="DISK",
                           help="disk uuid or device path; repeat or separate with commas")
    p = verb(r, "replace", c.pool_replace, "replace a device of the pool (a failed one) by an unused disk "
                                           "(POST /api/pool/<id> action replace)")
    c.selector(p, "pool")
    p.add_argument("--disk", required=True, metavar="PATH", help="the device to replace, as `pool show` lists it")
    p.add_argument("--new-disk", required=True, metavar="DISK", help="the unused disk: uuid or device path")
    p = verb(r, "delete", c.delete("pool"), "delete a pool with everything in it (DELETE /api/pool/<id>)")
    c.selector(p, "pool")

    # volumes
    r = resource("volume", "volumes: filesystems and LUNs")
    p = verb(r, "create", c.volume_create, "create a volume, or clone a snapshot (POST /api/volume)",
             "Create a filesystem or lun in a pool (--pool), a filebackedlun in a filesystem "
             "(--parent, --path), or a clone of a snapshot (--snapshot).")
    p.add_argument("name", help="volume name")
    p.add_argument("--type", dest="volume_type", choices=("filesystem", "lun", "filebackedlun"),
                   help="default filesystem")
    p.add_argument("--pool", metavar="POOL_ID", help="the pool (filesystem, lun)")
    p.add_argument("--size", type=c.size_arg, metavar="SIZE",
                   help="quota of a filesystem, size of a lun: bytes or 100G, 1.5T")
    p.add_argument("--block-size", type=c.size_arg, metavar="SIZE", help="lun block size (default 64K)")
    p.add_argument("--parent", metavar="VOLUME_ID", help="filebackedlun: the filesystem holding the file")
    p.add_argument("--path", help="filebackedlun: the file, relative to the filesystem")
    p.add_argument("--snapshot", metavar="SNAPSHOT_ID", help="clone this snapshot")
    p = verb(r, "show", c.show("volume", "volumes", c.VOLUME, {"pool": "pool_id", "volume_type": "volume_type"}),
             "list volumes, or show one volume's details (GET /api/volume)")
    c.selector(p, "volume", required=False)
    p.add_argument("--pool", metavar="POOL_ID", help="list only this pool's volumes")
    p.add_argument("--type", dest="volume_type", choices=("filesystem", "lun", "filebackedlun"),
                   help="list only volumes of this type")
    p = verb(r, "update", c.volume_update, "rename or resize a volume (PUT /api/volume/<id>)")
    c.selector(p, "volume")
    p.add_argument("--new-name", metavar="NAME", help="rename the volume")
    p.add_argument("--size", type=c.size_arg, metavar="SIZE", help="new quota or lun size: bytes or 100G")
    p.add_argument("--no-limit", action="store_true", help="remove a filesystem's quota")
    p = verb(r, "delete", c.delete("volume"), "delete a volume with its snapshots (DELETE /api/volume/<id>)")
    c.selector(p, "volume")
    p = verb(r, "map", c.volume_map, "map a lun to a host (POST /api/volume/<id>/map)")
    c.selector(p, "volume")
    p.add_argument("--host", required=True, metavar="HOST_ID", help="the host")

    # snapshots
    r = resource("snapshot", "snapshots of volumes")
    p = verb(r, "create", c.snapshot_create, "snapshot a volume (POST /api/volume/<id>/snapshot)")
    p.add_argument("name", nargs="?", help="snapshot name (default: generated)")
    p.add_argument("--volume", required=True, metavar="VOLUME_ID", help="the volume")
    p = verb(r, "show", c.show("snapshot", "snapshots", c.SNAPSHOT, {"volume": "parent_id"}),
             "list snapshots, or show one snapshot's details (GET /api/snapshot)")
    c.selector(p, "snapshot", required=False)
    p.add_argument("--volume", metavar="VOLUME_ID", help="list only this volume's snapshots")
    p = verb(r, "delete", c.delete("snapshot"), "delete a snapshot (DELETE /api/snapshot/<id>)")
    c.selector(p, "snapshot")

    # shares
    r = resource("share", "NFS and SMB shares of filesystem volumes")
    p = verb(r, "create", c.share_create, "share a filesystem (POST /api/volume/<id>/share)",
             "Share a filesystem volume. NFS: without --allow no external host may mount it.")
    p.add_argument("--volume", required=True, metavar="VOLUME_ID", help="the filesystem volume")
    p.add_argument("--type", dest="share_type", required=True, choices=("nfs", "smb"), help="nfs or smb")
    p.add_argument("--read-only", action="store_const", const=True, default=None, help="nfs: read-only")
    p.add_argument("--allow", action="append", metavar="HOST",
                   help="nfs: host, address, subnet (10.0.0.0/24) or 'all'; repeat or use commas")
    p = verb(r, "show", c.show("share", "shares", c.SHARE), "list shares, or show one share's details (GET /api/share)")
    c.selector(p, "share", by_name=False, required=False)
    p = verb(r, "update", c.share_update, "change a share's type or options (PUT /api/volume/<id>/share)",
             "Change a share: the current share is read and sent back with the changes, as the API asks.")
    c.selector(p, "share", by_name=False)
    p.add_argument("--volume", metavar="VOLUME_ID", help="the share of this volume (instead of ID)")
    p.add_argument("--type", dest="share_type", choices=("nfs", "smb"), help="change the share type")
    p.add_argument("--read-only", dest="read_only", action="store_const", const=True, default=None,
                   help="nfs: read-only")
    p.add_argument("--read-write", dest="read_only", action="store_const", const=False, help="nfs: read-write")
    p.add_argument("--allow", action="append", metavar="HOST", help="nfs: replace the allowed hosts")
    p.add_argument("--no-hosts", action="store_true", help="nfs: allow no external host")
    p = verb(r, "delete", c.share_delete, "stop sharing (DELETE /api/share/<id>)")
    c.selector(p, "share", by_name=False)
    p.add_argument("--volume", metavar="VOLUME_ID", help="the share of this volume (instead of ID)")

    # hosts
    r = resource("host", "iSCSI hosts and their LUNs")
    p = verb(r, "create", c.host_create, "create a host (POST /api/host)")
    p.add_argument("name", help="host name")
    p.add_argument("--iqn", action="append", metavar="IQN", help="initiator name; repeat or use commas")
    p = verb(r, "show", c.show("host", "hosts", c.HOST), "list hosts, or show one host's details (GET /api/host)")
    c.selector(p, "host", required=False)
    p = verb(r, "update", c.host_update, "rename a host or replace its initiators (PUT /api/host/<id>)")
    c.selector(p, "host")
    p.add_argument("--new-name", metavar="NAME", help="rename the host")
    p.add_argument("--iqn", action="append", metavar="IQN", help="the new initiator list; repeat or use commas")
    p.add_argument("--no-iqns", action="store_true", help="remove every initiator")
    for action, help_ in (("map", "map a volume to the host"), ("unmap", "unmap a volume from the host")):
        p = verb(r, action, c.host_action(action), f"{help_} (POST /api/host/<id> action {action})")
        c.selector(p, "host")
        p.add_argument("--volume", required=True, metavar="VOLUME_ID", help="the lun volume")
    p = verb(r, "delete", c.delete("host"), "delete a host; its LUNs are unmapped (DELETE /api/host/<id>)")
    c.selector(p, "host")

    # partners
    r = resource("partner", "partner appliances for replication")
    p = verb(r, "create", c.partner_create, "partner with a remote appliance (POST /api/partner)",
             "Partner with a remote appliance. Its password is used once and never stored; it is "
             "taken from VSNAP_REMOTE_PASSWORD or asked for.")
    p.add_argument("address", help="the remote appliance's management address")
    p.add_argument("--remote-user", required=True, metavar="USER", help="an admin account on the remote")
    p.add_argument("--remote-password", metavar="PASSWORD",
                   help="DISCOURAGED (visible in `ps`): use VSNAP_REMOTE_PASSWORD or the prompt")
    p.add_argument("--local-addr", metavar="ADDRESS", help="how the remote reaches this appliance")
    for name in ("remote-api-port", "remote-ssh-port", "local-api-port", "local-ssh-port"):
        p.add_argument(f"--{name}", type=int, metavar="PORT")
    p = verb(r, "show", c.show("partner", "partners", c.PARTNER), "list partners, or show one (GET /api/partner)")
    c.selector(p, "partner", by_name=False, required=False)
    p = verb(r, "delete", c.delete("partner"), "remove a partner (DELETE /api/partner/<id>)")
    c.selector(p, "partner", by_name=False)

    # relationships
    r = resource("relationship", "replication relationships of volumes")
    p = verb(r, "create", c.relationship_create, "replicate a volume to a partner (POST /api/volume/<id>/relationship)")
    p.add_argument("--volume", required=True, metavar="VOLUME_ID", help="the volume to replicate")
    p.add_argument("--partner", required=True, metavar="PARTNER_ID", help="the partner")
    p.add_argument("--remote-pool", metavar="POOL_ID", help="the partner's pool (default: its only pool)")
    p.add_argument("--remote-name", metavar="NAME", help="the replica's name (default <volume>_replica)")
    p.add_argument("--reuse", action="store_true", help="adopt an existing volume of that name as the replica")
    p.add_argument("--max-rate", type=c.size_arg, metavar="RATE",
                   help="keep its streams under this many bytes per second: bytes or 10M (default: no limit)")
    p = verb(r, "update", c.relationship_update, "change a relationship's bandwidth limit (PUT /api/relationship/<id>)")
    p.add_argument("ident", metavar="ID", help="the relationship's id (on the primary's appliance)")
    p.add_argument("--max-rate", type=c.rate_arg, metavar="RATE", required=True,
                   help="bytes per second, or 10M; 'none' for no limit (from the next session)")
    p = verb(r, "show", c.relationship_show, "list relationships, or show one (GET /api/relationship)")
    p.add_argument("ident", nargs="?", metavar="ID", help="the relationship's id")
    p.add_argument("--volume", metavar="VOLUME_ID", help="only this volume's relationships")
    p.add_argument("--volume-name", metavar="NAME", help="only the relationships of the volume with this name")
    p = verb(r, "delete", c.relationship_delete,
             "stop replicating; deletes the replica (DELETE /api/relationship/<id>)")
    p.add_argument("ident", metavar="ID", help="the relationship's id")
    p.add_argument("--preserve-replica", action="store_true", help="keep the replica volume on the partner")

    # sessions
    r = resource("session", "replication sessions")
    p = verb(r, "start", c.session_start, "send a snapshot to the replica (POST /api/relationship/<id>/session)")
    p.add_argument("ident", metavar="RELATIONSHIP_ID", help="the relationship")
    p.add_argument("--snapshot", metavar="SNAPSHOT_ID", help="the snapshot to send (default: a new one)")
    p.add_argument("--remote-snap-name", metavar="NAME", help="its name on the replica")
    p.add_argument("--rollback-replica", action="store_true",
                   help="roll a replica that has snapshots newer than the last common one back to it, "
                        "destroying them (without it such a session fails, naming them)")
    p.add_argument("--wait", action="store_true",
                   help="show progress until the session ends; exit 1 if it fails")
    wait_options(p, "session")
    p = verb(r, "show", c.show("session", "sessions", c.SESSION, {"relationship": "rel_id"}),
             "list sessions, or show one (GET /api/session)")
    c.selector(p, "session", by_name=False, required=False)
    p.add_argument("--relationship", metavar="RELATIONSHIP_ID", help="only this relationship's sessions")
    p = verb(r, "wait", c.session_wait, "follow a session until it ends; exit 1 if it fails")
    p.add_argument("ident", metavar="ID", help="the session's id")
    wait_options(p, "session")
    p = verb(r, "cancel", c.session_cancel, "cancel a pending or active session (POST /api/session/<id>)")
    p.add_argument("ident", metavar="ID", help="the session's id")

    # users, network, targets, audit
    r = resource("user", "accounts with the vsnap_admin role")
    verb(r, "show", c.show("user", "users", c.USER), "list the vsnap group's accounts (GET /api/user)")
    r = resource("network", "network interfaces and their services")
    p = verb(r, "show", c.show("network", "networks", c.NETWORK), "list interfaces, or show one (GET /api/network)")
    c.selector(p, "interface", by_name=False, required=False)
    p = verb(r, "update", c.network_update, "set an interface's services (PUT /api/network/<id>)")
    p.add_argument("ident", metavar="ID", help="the interface's id")
    p.add_argument("--services", action="append", required=True, metavar="LIST",
                   help="comma-separated: all, mgmt, nfs, smb, iscsi, repl")
    r = resource("target", "iSCSI target ports")
    verb(r, "show", c.show("target", "targets", c.TARGET), "list iSCSI targets (GET /api/target)")
    r = resource("audit", "the audit log of API requests")
    p = verb(r, "show", c.audit_show, "show recent audit events (GET /api/audit)")
    p.add_argument("--limit", type=int, metavar="N", help="the newest N events (the API's default is 100)")
    p.add_argument("--by-user", metavar="USER", help="only this account's requests")

    # keys: local, as root, never through the API
    keys.add_commands(resources)
    return parser


def main(argv: list[str] | None = None, *, transport=None, clock=None) -> int:
    """The console script. `transport` (an object with RequestsTransport's send) and `clock`
    (with sleep and monotonic) are for tests."""
    parser = build_parser()
    args = parser.parse_args(argv)
    err = sys.stderr
    if getattr(args, "local", None) is not None:  # `vsnap key ...`: on the appliance, no API call
        return keys.run(args)
    try:
        conn = resolve(args)
        verify, pin = tls_settings(conn.url, conn.ca, conn.insecure)
        if conn.insecure:
            err.write("warning: --insecure: the server's certificate is not checked, so the password "
                      "can be read by anyone in the path\n")
            warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        if transport is None:
            transport = RequestsTransport(verify=verify, pin=pin)
        base = conn.url.rstrip("/").removesuffix("/api")
        client = Client(base, (conn.user, conn.password), transport, timeout=args.timeout)
        ctx = c.Context(client, args, clock=clock or time)
        return args.func(ctx, args) or 0
    except c.UsageError as exc:
        args._parser.error(str(exc))  # exits 2 with the verb's usage line
    except ConfigError as exc:
        err.write(f"error: {exc}\n")
        return 2
    except ApiError as exc:
        err.write(f"error: {exc.message} ({exc.type})\n")
        return 1
    except ConnectionFailure as exc:
        err.write(f"error: {exc}\n")
        return 3
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `vsnap ... | head`: the reader has gone, nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit does not fail again
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
