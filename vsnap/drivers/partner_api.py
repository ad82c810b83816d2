"""Another appliance's HTTPS API, reached with its certificate pinned by fingerprint.

Appliances use self-signed certificates, so there is no authority to check one against: the
first contact reads the certificate (trust on first use), and the request that carries the
password is then made on a connection whose certificate must have that same fingerprint.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import ssl


class PartnerApiError(Exception):
    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind


def certificate_fingerprint(address: str, port: int, timeout: float = 10) -> str:
    """sha256 of the DER certificate the server at address:port presents, as hex."""
    try:
        pem = ssl.get_server_certificate((address, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise PartnerApiError(f"cannot reach {address}:{port}: {exc}") from exc
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def file_fingerprint(pem_path: str | os.PathLike[str]) -> str:
    with open(pem_path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


class PartnerApi:
    def __init__(self, address: str, port: int, fingerprint: str, timeout: float = 60):
        self.address = address
        self.port = port
        self.fingerprint = fingerprint
        self.timeout = timeout

    def post(self, path: str, body: dict, auth: tuple[str, str]) -> dict:
        """POSTs JSON with basic auth, on a connection whose certificate is checked against the
        pinned fingerprint before anything is sent."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed: the fingerprint below is the check
        conn = http.client.HTTPSConnection(self.address, self.port, timeout=self.timeout, context=context)
        where = f"{self.address}:{self.port}"
        try:
            conn.connect()
            cert = conn.sock.getpeercert(binary_form=True)
            if cert is None:  # (TLS has the server present one: only an odd peer gets here)
                raise PartnerApiError(f"{where}: presented no certificate")
            seen = hashlib.sha256(cert).hexdigest()
            if seen != self.fingerprint:
                raise PartnerApiError(f"{where}: the certificate changed while partnering")
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
            response = conn.getresponse()
            raw = response.read(1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            raise PartnerApiError(f"cannot reach {where}: {exc}") from exc
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if response.status != 200:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise PartnerApiError(error.get("message") or f"HTTP {response.status}", response.status,
                                  error.get("type"))
        return answer
