from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.network import SERVICES
from .common import Blueprint, StrictSchema, accepts_representation

blp = Blueprint("network", __name__, url_prefix="/api/network", description="Network interfaces (spec 4)")


class NetworkSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    hw_addr = ma.fields.String(allow_none=True)
    ip4_addrs = ma.fields.List(ma.fields.String())
    ip6_addrs = ma.fields.List(ma.fields.String())
    services = ma.fields.List(ma.fields.String())


class NetworkListSchema(ma.Schema):
    networks = ma.fields.List(ma.fields.Nested(NetworkSchema))
    total = ma.fields.Integer()


class NetworkUpdateSchema(StrictSchema):
    services = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(["all", *SERVICES])), required=True)


def _network():
    return current_app.extensions["vsnap"].network


@blp.route("")
@blp.response(200, NetworkListSchema)
def list_networks():
    """List network interfaces (4.1)"""
    networks = _network().list()
    return {"networks": networks, "total": len(networks)}


@blp.route("/<string:iface_id>")
@blp.response(200, NetworkSchema)
def get_network(iface_id):
    """Get one network interface"""
    return _network().get(iface_id)


@blp.route("/<string:iface_id>", methods=["PUT"])
@blp.arguments(NetworkUpdateSchema)
@blp.response(200, NetworkSchema)
@accepts_representation(NetworkSchema, lambda iface_id: _network().get(iface_id), fixed=("id", "name", "hw_addr"))
def update_network(args, iface_id):
    """Set an interface's services (4.2)"""
    return _network().update(iface_id, args["services"])
