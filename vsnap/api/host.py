from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.hosts import MAX_HOST_NAME, MAX_INITIATORS, MAX_IQN
from .common import Blueprint, EmptyResponse, Id, StrictSchema, accepts_representation, list_or_detail

blp = Blueprint("host", __name__, url_prefix="/api/host", description="Hosts and LUN mapping (spec 10)")

IQNS_DOC = ("iSCSI initiator names: iqn.yyyy-mm.reversed.domain[:identifier], eui.<16 hex> or "
            "naa.<16 or 32 hex>; each belongs to one host only")


class MappedLunSchema(ma.Schema):
    lun = ma.fields.String(metadata={"description": "The LUN number the host sees"})
    vol_id = ma.fields.String()


class HostSummarySchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    iqns = ma.fields.List(ma.fields.String())
    time_created = ma.fields.String()
    time_updated = ma.fields.String()


class HostSchema(HostSummarySchema):
    mapped_luns = ma.fields.List(ma.fields.Nested(MappedLunSchema))


class HostListSchema(ma.Schema):
    hosts = ma.fields.List(ma.fields.Nested(HostSummarySchema))
    total = ma.fields.Integer()


def iqn_list(**kwargs) -> ma.fields.List:
    return ma.fields.List(ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_IQN)),
                          validate=ma.validate.Length(max=MAX_INITIATORS), **kwargs)


class HostCreateSchema(StrictSchema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=MAX_HOST_NAME))
    iqns = iqn_list(load_default=list, metadata={"description": IQNS_DOC})


class HostUpdateSchema(StrictSchema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_HOST_NAME))
    iqns = iqn_list(metadata={"description": "Replaces the host's initiators; access follows at once. "
                                             + IQNS_DOC})


class HostActionSchema(StrictSchema):
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(("map", "unmap")))
    vol_id = Id(required=True)


class MapResultSchema(ma.Schema):
    vol_id = ma.fields.String()
    lun = ma.fields.String(metadata={"description": "The LUN number the host sees"})


class HostQuerySchema(StrictSchema):
    id = Id()
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=MAX_HOST_NAME))


def hosts():
    return current_app.extensions["vsnap"].hosts


@blp.route("", methods=["POST"])
@blp.arguments(HostCreateSchema)
@blp.response(200, HostSchema)
def create_host(args):
    """Create a host (10.1)"""
    return hosts().create(args["name"], args["iqns"])


@blp.route("")
@blp.arguments(HostQuerySchema, location="query")
@list_or_detail(blp, HostListSchema, HostSchema)
def list_hosts(query):
    """List hosts (10.2); ?id= or ?name= gives one's details (10.3)"""
    if "id" in query or "name" in query:
        return "detail", hosts().get(query.get("id"), query.get("name"))
    found = hosts().list()
    return "list", {"hosts": found, "total": len(found)}


@blp.route("/<string:host_id>")
@blp.response(200, HostSchema)
def get_host(host_id):
    """Get host details, with its mapped LUNs (10.3)"""
    return hosts().get(host_id)


@blp.route("/<string:host_id>", methods=["PUT"])
@blp.arguments(HostUpdateSchema)
@blp.response(200, HostSchema)
@accepts_representation(HostSchema, lambda host_id: hosts().get(host_id=host_id), fixed=("id",))
def update_host(args, host_id):
    """Rename a host or replace its initiators (10.4)"""
    return hosts().update(host_id, args.get("name"), args.get("iqns"))


@blp.route("/<string:host_id>", methods=["POST"])
@blp.arguments(HostActionSchema)
@blp.response(200, MapResultSchema, description="map: the LUN; unmap: an empty object")
def host_action(args, host_id):
    """Map a volume to the host (10.5) or unmap it (10.6)"""
    if args["action"] == "map":
        return hosts().map(host_id, args["vol_id"])
    hosts().unmap(host_id, args["vol_id"])
    return {}


@blp.route("/<string:host_id>", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_host(host_id):
    """Delete a host; its LUNs are unmapped (10.7)"""
    hosts().delete(host_id)
    return {}
