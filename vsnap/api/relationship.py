from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.volumes import MAX_NAME
from .common import Blueprint, EmptyResponse, Id, Size, StrictSchema, accepts_representation, list_or_detail
from .session import SessionSchema

blp = Blueprint("relationship", __name__, url_prefix="/api/relationship",
                description="Replication relationships (spec 13)")


class CommonSnapshotSchema(ma.Schema):
    name = ma.fields.String()
    guid = ma.fields.String()


class RelationshipSchema(ma.Schema):
    id = ma.fields.String()
    local_pool_id = ma.fields.String()
    local_role = ma.fields.String(metadata={"enum": ["primary", "replica"]})
    local_vol_id = ma.fields.String()
    local_vol_name = ma.fields.String()
    partner_id = ma.fields.String()
    remote_pool_id = ma.fields.String()
    remote_vol_id = ma.fields.String()
    remote_vol_name = ma.fields.String()
    last_sync_status = ma.fields.String(allow_none=True)
    last_attempt_snap_id = ma.fields.String(allow_none=True)
    last_success_snap_id = ma.fields.String(allow_none=True)
    max_rate = ma.fields.String(allow_none=True, metadata={
        "description": "Beyond the spec: the bandwidth limit of its streams, bytes per second (null: none)"})
    last_common_snapshot = ma.fields.Nested(CommonSnapshotSchema, allow_none=True, metadata={
        "description": "Beyond the spec: the newest snapshot both sides hold (the primary keeps a bookmark of "
                       "it, so the next incremental goes from there even once it is deleted); null before the "
                       "first session completes"})
    time_created = ma.fields.String()
    time_updated = ma.fields.String()


class RelationshipListSchema(ma.Schema):
    relationships = ma.fields.List(ma.fields.Nested(RelationshipSchema))
    total = ma.fields.Integer()


MIN_RATE, MAX_RATE = 1024, 10**12  # 1 KiB/s .. 1 TB/s


class RelationshipCreateSchema(StrictSchema):
    partner_id = Id(hex32=True, required=True)
    remote_pool_id = Id(allow_none=True, metadata={"description": "Default: the partner's only pool"})
    remote_vol_name = ma.fields.String(allow_none=True, validate=ma.validate.Length(min=1, max=MAX_NAME),
                                       metadata={"description": "Default: <volume>_replica"})
    reuse = ma.fields.Boolean(load_default=False, metadata={
        "description": "Adopt an existing volume of that name on the partner as the replica"})
    max_rate = Size(allow_none=True, validate=ma.validate.Range(min=MIN_RATE, max=MAX_RATE), metadata={
        "description": "Beyond the spec: keep its streams under this many bytes per second (null: no limit)"})


class RelationshipUpdateSchema(StrictSchema):
    max_rate = Size(required=True, allow_none=True, validate=ma.validate.Range(min=MIN_RATE, max=MAX_RATE),
                    metadata={"description": "Bytes per second (null: no limit); from the next session"})


class RelationshipQuerySchema(StrictSchema):
    id = Id(hex32=True)
    vol_name = ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_NAME))


class RelationshipDeleteQuerySchema(StrictSchema):
    preserve_replica = ma.fields.Boolean(load_default=False, metadata={
        "description": "1 or true: keep the replica volume on the partner"})


class SessionStartSchema(StrictSchema):
    snap_id = Id(allow_none=True, metadata={"description": "Default: a new snapshot of the volume"})
    remote_snap_name = ma.fields.String(allow_none=True, validate=ma.validate.Length(min=1, max=MAX_NAME),
                                        metadata={"description": "Default: the local snapshot's name"})
    rollback_replica = ma.fields.Boolean(load_default=False, metadata={
        "description": "Beyond the spec: a replica with snapshots newer than the last one both sides hold is "
                       "rolled back to it, destroying them (without it, such a session fails naming them)"})


def replication():
    return current_app.extensions["vsnap"].replication


@blp.route("")
@blp.arguments(RelationshipQuerySchema, location="query")
@list_or_detail(blp, RelationshipListSchema, RelationshipSchema)
def list_relationships(query):
    """List relationships (13.2), ?vol_name= for one volume's; ?id= gives one's details (13.3)"""
    if "id" in query:
        return "detail", replication().get_relationship(query["id"])
    found = replication().list_relationships(vol_name=query.get("vol_name"))
    return "list", {"relationships": found, "total": len(found)}


@blp.route("/<string:rel_id>")
@blp.response(200, RelationshipSchema)
def get_relationship(rel_id):
    """Get relationship details (13.3), from either side"""
    return replication().get_relationship(rel_id)


@blp.route("/<string:rel_id>", methods=["PUT"])
@blp.arguments(RelationshipUpdateSchema)
@blp.response(200, RelationshipSchema)
@accepts_representation(RelationshipSchema, lambda rel_id: replication().get_relationship(rel_id),
                        fixed=("id", "local_pool_id", "local_role", "local_vol_id", "local_vol_name", "partner_id",
                               "remote_pool_id", "remote_vol_id", "remote_vol_name"))
def update_relationship(args, rel_id):
    """Beyond the spec: change a relationship's bandwidth limit (max_rate), on its primary"""
    return replication().update_relationship(rel_id, max_rate=args["max_rate"])


@blp.route("/<string:rel_id>", methods=["DELETE"])
@blp.arguments(RelationshipDeleteQuerySchema, location="query")
@blp.response(200, EmptyResponse)
def delete_relationship(query, rel_id):
    """Delete a relationship (13.4): the replica volume too, unless preserve_replica"""
    replication().delete_relationship(rel_id, query["preserve_replica"])
    return {}


@blp.route("/<string:rel_id>/session", methods=["POST"])
@blp.arguments(SessionStartSchema)
@blp.response(200, SessionSchema)
def start_session(args, rel_id):
    """Start a replication session (14.1): queued, then sent by the worker"""
    return replication().start_session(rel_id, args.get("snap_id"), args.get("remote_snap_name"),
                                       args["rollback_replica"])
