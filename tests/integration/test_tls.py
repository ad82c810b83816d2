"""HTTPS only, TLS 1.2 or newer, no weak ciphers."""
from __future__ import annotations

import socket
import ssl

import pytest


def _handshake(port: int, *, version: ssl.TLSVersion | None = None, ciphers: str | None = None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.version(), tls.cipher()


def test_tls12_and_tls13_are_accepted(appliance):
    assert _handshake(appliance.port, version=ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
    assert _handshake(appliance.port, version=ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(appliance, version):
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(appliance.port, version=version, ciphers="ALL:@SECLEVEL=0")
    # The server must be the one refusing, not our client failing to offer the version.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(caught.value)


@pytest.mark.parametrize("cipher", ["AES128-SHA", "DES-CBC3-SHA", "ECDHE-RSA-AES128-SHA"])
def test_weak_ciphers_are_refused(appliance, cipher):
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(appliance.port, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher + ":@SECLEVEL=0")
    assert "NO_CIPHERS_AVAILABLE" not in str(caught.value)
