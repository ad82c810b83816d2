from __future__ import annotations

import marshmallow as ma
from flask import current_app

from .common import Blueprint, StrictSchema

blp = Blueprint("system", __name__, url_prefix="/api/system", description="Appliance info and init (spec 2)")


class SystemSchema(ma.Schema):
    fqdn = ma.fields.String()
    hostname = ma.fields.String()
    id = ma.fields.String()
    init_status = ma.fields.String(metadata={"enum": ["Not Initialized", "Initializing", "Ready", "Failed"]})
    message = ma.fields.String(metadata={"description": "Why init failed (only with Failed)"})
    multipool = ma.fields.Boolean()
    api_version = ma.fields.String()
    nfs_version = ma.fields.String(allow_none=True)
    nginx_version = ma.fields.String(allow_none=True)
    os_name = ma.fields.String(allow_none=True)
    os_version = ma.fields.String(allow_none=True)
    samba_version = ma.fields.String(allow_none=True)
    uwsgi_version = ma.fields.String(allow_none=True, metadata={
        "description": "Version of the WSGI server (gunicorn) serving the API"})
    vsnap_version = ma.fields.String(allow_none=True)
    zfs_version = ma.fields.String(allow_none=True)
    features = ma.fields.List(ma.fields.String(), metadata={
        "description": "Beyond vSnap 1.0: bandwidth_limit (a relationship's max_rate), compressed_send "
                       "(replication streams cross the wire compressed, where both appliances' ZFS can), "
                       "resumable_send (a broken transfer goes on where it stopped)"})


class InitSchema(StrictSchema):
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(["init"]))
    # `async` is a Python keyword: the attribute has another name.
    run_async = ma.fields.Boolean(data_key="async", load_default=False)
    # Absent: the setting stays as it is (false until an init sets it), so a later init that
    # does not name it never takes away what an earlier one allowed.
    multipool = ma.fields.Boolean(load_default=None, metadata={
        "description": "Allow more than one pool (true) or only one (false); when absent the "
                       "setting is left as it is (false on a new appliance)"})
    skip_pool = ma.fields.Boolean(load_default=False)


def _services():
    return current_app.extensions["vsnap"]


@blp.route("")
@blp.response(200, SystemSchema)
def get_system():
    """Get system info (2.1)"""
    return _services().system.info()


@blp.route("", methods=["POST"])
@blp.arguments(InitSchema)
@blp.response(200, SystemSchema)
def init_system(args):
    """Initialize the system (2.2)"""
    return _services().system.init(run_async=args["run_async"], multipool=args["multipool"],
                                   skip_pool=args["skip_pool"])


class StatsSchema(ma.Schema):
    size_arc_max = ma.fields.String(allow_none=True)
    size_arc_used = ma.fields.String(allow_none=True)
    size_ddt_core = ma.fields.String(allow_none=True)
    size_ddt_disk = ma.fields.String(allow_none=True)
    size_zfs_arc_meta_max = ma.fields.String(allow_none=True)
    size_zfs_arc_meta_used = ma.fields.String(allow_none=True)


@blp.route("/stats")
@blp.response(200, StatsSchema)
def get_stats():
    """ZFS cache (ARC) and dedup-table sizes in bytes; null where this ZFS does not report them"""
    services = _services()
    return services.system.stats([p["name"] for p in services.pools.list()])
