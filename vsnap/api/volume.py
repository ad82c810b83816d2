from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.volumes import MAX_NAME, VOLUME_TYPES
from .common import Blueprint, EmptyResponse, Id, Size, StrictSchema, accepts_representation, list_or_detail
from .host import MapResultSchema
from .relationship import RelationshipCreateSchema, RelationshipListSchema, RelationshipSchema
from .share import ShareBodySchema, ShareSchema, ShareUpdateSchema
from .snapshot import SnapshotCreateSchema, SnapshotListSchema, SnapshotSchema

blp = Blueprint("volume", __name__, url_prefix="/api/volume", description="Volumes (spec 8)")


class VolumeSummarySchema(ma.Schema):
    id = ma.fields.String()
    volume_type = ma.fields.String(metadata={"enum": list(VOLUME_TYPES)})
    is_clone = ma.fields.Boolean()
    name = ma.fields.String()
    pool_id = ma.fields.String()
    size_total = ma.fields.String(allow_none=True)
    size_free = ma.fields.String(allow_none=True)
    size_used = ma.fields.String(allow_none=True)
    time_created = ma.fields.String()
    time_updated = ma.fields.String()


class VolumeSchema(VolumeSummarySchema):
    serial = ma.fields.String(allow_none=True)
    pool_name = ma.fields.String()
    parent_id = ma.fields.String(allow_none=True)
    parent_path = ma.fields.String(allow_none=True)
    snapshot_id = ma.fields.String(allow_none=True, metadata={"description": "A clone's origin snapshot"})
    share_id = ma.fields.String(allow_none=True)
    host_ids = ma.fields.List(ma.fields.String())


class VolumeListSchema(ma.Schema):
    volumes = ma.fields.List(ma.fields.Nested(VolumeSummarySchema))
    total = ma.fields.Integer()


class VolumeQuerySchema(StrictSchema):
    id = Id()
    name = ma.fields.String(validate=ma.validate.Length(max=MAX_NAME))
    type = ma.fields.String(validate=ma.validate.OneOf(VOLUME_TYPES))
    volume_type = ma.fields.String(validate=ma.validate.OneOf(VOLUME_TYPES))
    pool_id = Id()


class VolumeCreateSchema(StrictSchema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=MAX_NAME))
    volume_type = ma.fields.String(validate=ma.validate.OneOf(VOLUME_TYPES))
    pool_id = Id()
    size_total = Size(allow_none=True)
    size_block = Size(allow_none=True)
    parent_id = Id()
    parent_path = ma.fields.String(validate=ma.validate.Length(min=1, max=4096))
    snapshot_id = Id(metadata={"description": "Clone this snapshot (then no volume_type)"})


class VolumeUpdateSchema(StrictSchema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_NAME))
    size_total = Size(allow_none=True, metadata={
        "description": "Quota of a filesystem (null removes it) or size of a LUN; never below what is used"})


def _volumes():
    return current_app.extensions["vsnap"].volumes


def _snapshots():
    return current_app.extensions["vsnap"].snapshots


def _shares():
    return current_app.extensions["vsnap"].shares


@blp.route("", methods=["POST"])
@blp.arguments(VolumeCreateSchema)
@blp.response(200, VolumeSchema)
def create_volume(args):
    """Create a volume, or clone one from a snapshot (8.1)"""
    return _volumes().create(**args)


@blp.route("")
@blp.arguments(VolumeQuerySchema, location="query")
@list_or_detail(blp, VolumeListSchema, VolumeSchema)
def list_volumes(query):
    """List volumes (8.2), ?type=/?pool_id= filter; ?id= or ?name= gives one's details (8.3)"""
    if "id" in query or "name" in query:
        return "detail", _volumes().get(vol_id=query.get("id"), name=query.get("name"))
    volumes = _volumes().list(volume_type=query.get("volume_type") or query.get("type"),
                              pool_id=query.get("pool_id"))
    return "list", {"volumes": volumes, "total": len(volumes)}


@blp.route("/<string:vol_id>")
@blp.response(200, VolumeSchema)
def get_volume(vol_id):
    """Get volume details (8.3)"""
    return _volumes().get(vol_id=vol_id)


@blp.route("/<string:vol_id>", methods=["PUT"])
@blp.arguments(VolumeUpdateSchema)
@blp.response(200, VolumeSchema)
@accepts_representation(VolumeSchema, lambda vol_id: _volumes().get(vol_id=vol_id),
                        fixed=("id", "volume_type", "is_clone", "pool_id", "serial", "parent_id", "parent_path",
                               "snapshot_id"))
def update_volume(args, vol_id):
    """Rename a volume or change its size (8.4)"""
    return _volumes().update(vol_id, **args)


@blp.route("/<string:vol_id>", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_volume(vol_id):
    """Delete a volume with its snapshots, shares and mappings (8.5)"""
    _volumes().delete(vol_id)
    return {}


@blp.route("/<string:vol_id>/snapshot", methods=["POST"])
@blp.arguments(SnapshotCreateSchema)
@blp.response(200, SnapshotSchema)
def create_snapshot(args, vol_id):
    """Snapshot a volume (8.6)"""
    return _snapshots().create(vol_id, args.get("name"))


@blp.route("/<string:vol_id>/snapshot")
@blp.response(200, SnapshotListSchema)
def list_volume_snapshots(vol_id):
    """List a volume's snapshots (8.7)"""
    snaps = _snapshots().list(parent_id=vol_id)
    return {"snapshots": snaps, "total": len(snaps)}


class VolumeMapSchema(StrictSchema):
    host_id = Id(required=True)


@blp.route("/<string:vol_id>/map", methods=["POST"])
@blp.arguments(VolumeMapSchema)
@blp.response(200, MapResultSchema)
def map_volume(args, vol_id):
    """Map a lun or filebackedlun volume to a host (8.10)"""
    return current_app.extensions["vsnap"].hosts.map(args["host_id"], vol_id)


@blp.route("/<string:vol_id>/relationship", methods=["POST"])
@blp.arguments(RelationshipCreateSchema)
@blp.response(200, RelationshipSchema)
def create_relationship(args, vol_id):
    """Replicate a volume to a partner (13.1): the replica volume is made on the partner"""
    return current_app.extensions["vsnap"].replication.create_relationship(vol_id, **args)


@blp.route("/<string:vol_id>/relationship")
@blp.response(200, RelationshipListSchema)
def list_volume_relationships(vol_id):
    """List a volume's relationships (13.2)"""
    found = current_app.extensions["vsnap"].replication.list_relationships(vol_id=vol_id)
    return {"relationships": found, "total": len(found)}


@blp.route("/<string:vol_id>/share", methods=["POST"])
@blp.arguments(ShareBodySchema)
@blp.response(200, ShareSchema)
def create_volume_share(args, vol_id):
    """Share a filesystem volume over NFS or SMB (8.8)"""
    return _shares().create(vol_id, args["share_type"], args["share_options"])


@blp.route("/<string:vol_id>/share", methods=["PUT"])
@blp.arguments(ShareUpdateSchema)
@blp.response(200, ShareSchema)
@accepts_representation(ShareSchema, lambda vol_id: _shares().get(vol_id=vol_id), fixed=("id", "vol_id"))
def update_volume_share(args, vol_id):
    """Replace a share's type and options (9.3)"""
    return _shares().update(vol_id, args["share_type"], args["share_options"])


@blp.route("/<string:vol_id>/share", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_volume_share(vol_id):
    """Stop sharing a volume (8.9)"""
    _shares().delete(vol_id=vol_id)
    return {}
