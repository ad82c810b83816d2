from __future__ import annotations

import marshmallow as ma
from flask import current_app

from .common import Blueprint, EmptyResponse, Id, Size, StrictSchema, list_or_detail

blp = Blueprint("partner", __name__, url_prefix="/api/partner", description="Partner appliances (spec 12)")


class Port(Size):
    """A TCP port, as a JSON number or a decimal string."""

    def __init__(self, **kwargs):
        super().__init__(validate=ma.validate.Range(min=1, max=65535, error="Not a valid port: expected 1 to 65535."),
                         **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return super()._deserialize(value, attr, data, **kwargs)
        except ma.ValidationError:
            raise ma.ValidationError("Not a valid port: expected a whole number from 1 to 65535.") from None


class PartnerSchema(ma.Schema):
    id = ma.fields.String()
    address = ma.fields.String()
    api_port = ma.fields.String()
    ssh_port = ma.fields.String()
    time_created = ma.fields.String()
    time_updated = ma.fields.String()


class PartnerDetailSchema(PartnerSchema):
    """The details add (beyond the spec) whether the partnership still works, asked of the
    partner when the details are read."""
    trust_status = ma.fields.String(metadata={
        "description": "OK; REFUSED: the partner no longer knows or accepts this appliance (it was "
                       "rebuilt or removed the partnership); UNREACHABLE: no answer over SSH"})
    trust_message = ma.fields.String(allow_none=True, metadata={"description": "What was seen, if not OK"})


class PartnerListSchema(ma.Schema):
    partners = ma.fields.List(ma.fields.Nested(PartnerSchema))
    total = ma.fields.Integer()


class PartnerCreateSchema(StrictSchema):
    remote_addr = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=253))
    remote_user = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=256))
    remote_pass = ma.fields.String(required=True, load_only=True, validate=ma.validate.Length(max=4096),
                                   metadata={"description": "Used once to set up trust; never stored"})
    local_addr = ma.fields.String(allow_none=True, validate=ma.validate.Length(min=1, max=253),
                                  metadata={"description": "How the partner reaches this appliance; "
                                                           "default: the address used to reach it"})
    local_api_port = Port(allow_none=True)
    remote_api_port = Port(allow_none=True, metadata={"description": "Default 8900"})
    local_ssh_port = Port(allow_none=True)
    remote_ssh_port = Port(allow_none=True, metadata={"description": "Default: the port the partner names"})


class PartnerOfferSchema(StrictSchema):
    id = ma.fields.String(required=True, validate=ma.validate.Length(equal=32))
    system_id = ma.fields.String(required=True, validate=ma.validate.Length(max=64))
    address = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=253))
    api_port = Port(required=True)
    ssh_port = Port(required=True)
    ssh_public_key = ma.fields.String(required=True, validate=ma.validate.Length(max=16384))
    ssh_host_key = ma.fields.String(required=True, validate=ma.validate.Length(max=16384))
    tls_fingerprint = ma.fields.String(required=True, validate=ma.validate.Length(equal=64))


class PartnerAnswerSchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "The id this appliance knows the offering one by"})
    renewed = ma.fields.Boolean(metadata={"description": "True when it was partnered already"})
    system_id = ma.fields.String()
    ssh_public_key = ma.fields.String()
    ssh_host_key = ma.fields.String()
    ssh_port = ma.fields.Integer()
    api_port = ma.fields.Integer()


class PartnerQuerySchema(StrictSchema):
    id = Id(hex32=True)


def replication():
    return current_app.extensions["vsnap"].replication


@blp.route("", methods=["POST"])
@blp.arguments(PartnerCreateSchema)
@blp.response(200, PartnerSchema)
def create_partner(args):
    """Add a partner appliance (12.1): trust is set up on both sides"""
    return replication().create_partner(**args)


@blp.route("/accept", methods=["POST"])
@blp.arguments(PartnerOfferSchema)
@blp.response(200, PartnerAnswerSchema)
def accept_partner(args):
    """The partner's half of 12.1: called by an appliance adding this one as its partner"""
    return replication().accept_partner(args)


@blp.route("")
@blp.arguments(PartnerQuerySchema, location="query")
@list_or_detail(blp, PartnerListSchema, PartnerDetailSchema)
def list_partners(query):
    """List partners (12.2); ?id= gives one's details (12.3)"""
    if "id" in query:
        return "detail", replication().get_partner(query["id"], check_trust=True)
    partners = replication().list_partners()
    return "list", {"partners": partners, "total": len(partners)}


@blp.route("/<string:partner_id>")
@blp.response(200, PartnerDetailSchema)
def get_partner(partner_id):
    """Get partner details (12.3), and whether the partnership still works (asked of it now)"""
    return replication().get_partner(partner_id, check_trust=True)


@blp.route("/<string:partner_id>", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_partner(partner_id):
    """Remove a partner (12.4): trust is removed on both sides when the partner is reachable"""
    replication().delete_partner(partner_id)
    return {}
