from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.pools import DEFAULT_GROUP_SIZE, MAX_NAME, POOL_TYPES
from .common import Blueprint, ClosedSchema, EmptyResponse, Id, StrictSchema, accepts_representation, list_or_detail

blp = Blueprint("pool", __name__, url_prefix="/api/pool", description="Storage pools (spec 7)")

ACTIONS = ["expand", "addlog", "removelog", "addcache", "removecache", "addspare", "removespare",
           "scrub", "scrub_stop", "replace"]


class EncryptionSchema(ma.Schema):
    enabled = ma.fields.Boolean(metadata={"description": "the pool's datasets are encrypted at rest "
                                                         "(aes-256-gcm, a key the appliance keeps root-only)"})


class ScanSchema(ma.Schema):
    function = ma.fields.String(metadata={"enum": ["scrub", "resilver"]})
    state = ma.fields.String(metadata={"enum": ["scanning", "finished", "canceled"]})
    percent = ma.fields.Float(allow_none=True, metadata={"description": "share done, 0-100 (null if unknown)"})
    estimated_end = ma.fields.String(allow_none=True, metadata={
        "description": "Epoch seconds: when a running scan should end, by ZFS's estimate (null when it "
                       "gives none)"})
    errors = ma.fields.Integer(allow_none=True, metadata={"description": "errors ZFS could not repair, once "
                                                                         "the scan ended"})
    time_started = ma.fields.String(allow_none=True, metadata={"description": "Epoch seconds"})
    time_ended = ma.fields.String(allow_none=True, metadata={"description": "Epoch seconds"})


class DiskStateSchema(ma.Schema):
    path = ma.fields.String(metadata={"description": "the device as `disks` shows it"})
    group = ma.fields.String(metadata={"description": "the key of `disks` it is under"})
    role = ma.fields.String(metadata={"enum": ["data", "log", "cache", "spare", "special", "dedup"]})
    state = ma.fields.String(allow_none=True, metadata={
        "description": "ZFS's state: ONLINE, DEGRADED, FAULTED, UNAVAIL, REMOVED, OFFLINE; a spare's "
                       "AVAIL or INUSE"})
    replacing = ma.fields.String(allow_none=True, metadata={
        "enum": ["old", "new", "spare"],
        "description": "in a replacement or a hot spare's stand-in: the device replaced (old), its "
                       "replacement (new) or the hot spare taking over (spare)"})


class PoolSummarySchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    pool_type = ma.fields.String(metadata={"enum": list(POOL_TYPES)})
    size_total = ma.fields.String()
    size_free = ma.fields.String()
    size_used = ma.fields.String()
    status = ma.fields.String(metadata={"description": "ZFS pool state: ONLINE, DEGRADED, FAULTED, ..."})
    health = ma.fields.String(metadata={"description": "0-100: the share of healthy devices"})
    time_created = ma.fields.String()
    time_updated = ma.fields.String()
    encryption = ma.fields.Nested(EncryptionSchema)
    scan = ma.fields.Nested(ScanSchema, allow_none=True, metadata={
        "description": "Beyond the spec: the scrub or resilver running, or the last one (null: none yet)"})


class PoolSchema(PoolSummarySchema):
    compression = ma.fields.Boolean()
    compression_ratio = ma.fields.String()
    deduplication = ma.fields.Boolean()
    deduplication_ratio = ma.fields.String()
    diskgroup_size = ma.fields.String()
    disks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()), metadata={
        "description": "<pool_type>_group<N> per data group, plus log, cache and spare"})
    size_before_compression = ma.fields.String()
    size_before_deduplication = ma.fields.String()
    syncwrite = ma.fields.Boolean()
    disk_states = ma.fields.List(ma.fields.Nested(DiskStateSchema), metadata={
        "description": "Beyond the spec: each device of `disks` with its state and role"})


class PoolListSchema(ma.Schema):
    pools = ma.fields.List(ma.fields.Nested(PoolSummarySchema))
    total = ma.fields.Integer()


class PoolQuerySchema(StrictSchema):
    id = Id()
    name = ma.fields.String(validate=ma.validate.Length(max=MAX_NAME))


class DiskUuid(ma.fields.String):
    def __init__(self, **kwargs):
        super().__init__(validate=ma.validate.Length(min=1, max=128), **kwargs)


class EncryptionRequestSchema(ClosedSchema):
    """`encryption` in a create: a key there that is not known is refused, as in share_options
    (ignoring it could give a pool other than the one asked for)."""
    enabled = ma.fields.Boolean(required=True)


class PoolCreateSchema(StrictSchema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=MAX_NAME))
    disk_list = ma.fields.List(DiskUuid(), load_default=None, allow_none=True)
    pool_type = ma.fields.String(required=True, validate=ma.validate.OneOf(list(POOL_TYPES)))
    compression = ma.fields.Boolean(load_default=True)
    deduplication = ma.fields.Boolean(load_default=False)
    syncwrite = ma.fields.Boolean(load_default=True)
    diskgroup_size = ma.fields.Integer(load_default=DEFAULT_GROUP_SIZE, strict=False,
                                       validate=ma.validate.Range(min=3, max=32), metadata={
                                           "description": "Most disks per raid5/raid6 group (default 8)"})
    encryption = ma.fields.Nested(EncryptionRequestSchema, load_default=None, metadata={
        "description": '{"enabled": true}: encrypted at rest (where ZFS has native encryption: not on zfs-fuse)'})


class PoolUpdateSchema(StrictSchema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_NAME))
    compression = ma.fields.Boolean()
    deduplication = ma.fields.Boolean()
    syncwrite = ma.fields.Boolean()


class PoolActionSchema(StrictSchema):
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(ACTIONS))
    disk_list = ma.fields.List(DiskUuid(), load_default=None, allow_none=True)
    # addcache: a disk's uuid; replace: the device to replace, by its path in the pool's disks
    disk = ma.fields.String(load_default=None, allow_none=True, validate=ma.validate.Length(min=1, max=4096),
                            metadata={"description": "addcache: a disk uuid; replace: the path of the pool's "
                                                     "device to replace, as its disks show it"})


def _pools():
    return current_app.extensions["vsnap"].pools


@blp.route("", methods=["POST"])
@blp.arguments(PoolCreateSchema)
@blp.response(200, PoolSchema)
def create_pool(args):
    """Create a pool (7.1)"""
    return _pools().create(**args)


@blp.route("")
@blp.arguments(PoolQuerySchema, location="query")
@list_or_detail(blp, PoolListSchema, PoolSchema)
def list_pools(query):
    """List pools (7.2); with ?id= or ?name=, one pool's details (7.3)"""
    if query:
        return "detail", _pools().get(pool_id=query.get("id"), name=query.get("name"))
    pools = _pools().list()
    return "list", {"pools": pools, "total": len(pools)}


@blp.route("/<string:pool_id>")
@blp.response(200, PoolSchema)
def get_pool(pool_id):
    """Get pool details (7.3)"""
    return _pools().get(pool_id=pool_id)


@blp.route("/<string:pool_id>", methods=["PUT"])
@blp.arguments(PoolUpdateSchema)
@blp.response(200, PoolSchema)
@accepts_representation(PoolSchema, lambda pool_id: _pools().get(pool_id=pool_id),
                        fixed=("id", "pool_type", "diskgroup_size", "encryption"))
def update_pool(args, pool_id):
    """Rename a pool or change compression, deduplication, syncwrite (7.4.1)"""
    return _pools().update(pool_id, **args)


@blp.route("/<string:pool_id>", methods=["POST"])
@blp.arguments(PoolActionSchema)
@blp.response(200, PoolSchema)
def pool_action(args, pool_id):
    """Expand, or add/remove log, cache and spare devices (7.4.2-7.4.5); beyond the spec, scrub,
    scrub_stop, and replace (disk: the device's path, disk_list: one unused disk's uuid)"""
    return _pools().action(pool_id, args["action"], disk_list=args["disk_list"], disk=args["disk"])


@blp.route("/<string:pool_id>", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_pool(pool_id):
    """Delete a pool and everything in it (7.5)"""
    _pools().delete(pool_id)
    return {}
