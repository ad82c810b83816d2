from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.volumes import MAX_NAME
from .common import Blueprint, EmptyResponse, Id, StrictSchema, list_or_detail

blp = Blueprint("snapshot", __name__, url_prefix="/api/snapshot", description="Snapshots (spec 8.6, 8.7, 11)")


class SnapshotSummarySchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    parent_id = ma.fields.String()
    time_created = ma.fields.String()
    time_updated = ma.fields.String()


class SnapshotSchema(SnapshotSummarySchema):
    parent_name = ma.fields.String()
    pool_id = ma.fields.String()
    pool_name = ma.fields.String()
    has_clones = ma.fields.Boolean()
    size_used = ma.fields.String(allow_none=True)
    version_id = ma.fields.String(allow_none=True, metadata={"description": "The snapshot's ZFS guid"})


class SnapshotListSchema(ma.Schema):
    snapshots = ma.fields.List(ma.fields.Nested(SnapshotSummarySchema))
    total = ma.fields.Integer()


class SnapshotQuerySchema(StrictSchema):
    id = Id()
    name = ma.fields.String(validate=ma.validate.Length(max=MAX_NAME))
    parent_id = Id()


class SnapshotCreateSchema(StrictSchema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_NAME), metadata={
        "description": "Unique per volume; generated when absent"})


def _snapshots():
    return current_app.extensions["vsnap"].snapshots


@blp.route("")
@blp.arguments(SnapshotQuerySchema, location="query")
@list_or_detail(blp, SnapshotListSchema, SnapshotSchema)
def list_snapshots(query):
    """List snapshots (11.1), ?parent_id= filters; ?id= or ?name= gives one's details (11.2)"""
    if "id" in query or "name" in query:
        return "detail", _snapshots().get(snap_id=query.get("id"), name=query.get("name"))
    snaps = _snapshots().list(parent_id=query.get("parent_id"))
    return "list", {"snapshots": snaps, "total": len(snaps)}


@blp.route("/<string:snap_id>")
@blp.response(200, SnapshotSchema)
def get_snapshot(snap_id):
    """Get snapshot details (11.2)"""
    return _snapshots().get(snap_id=snap_id)


@blp.route("/<string:snap_id>", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_snapshot(snap_id):
    """Delete a snapshot; refused while it has clones (11.3)"""
    _snapshots().delete(snap_id)
    return {}
