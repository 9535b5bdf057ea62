"""Dask's TLS settings for the service (a Dask client) and for ``cloakd worker``.

Dask's TLS is mutual: the scheduler, each worker and the service each show a certificate signed by the
cluster's own CA, and accept only peers whose certificate that CA signed. So the CA is also the list of
machines allowed in: a worker's results are unpickled by the service, so only machines you trust with
the service itself get a certificate.
"""

from __future__ import annotations

from pathlib import Path

ROLES = ("client", "worker")


def security(address: str, ca: Path | None, cert: Path | None, key: Path | None, role: str):
    """distributed.Security for a ``tls://`` address (encryption required), None for ``tcp://``."""
    if not address.startswith("tls://"):
        return None
    from distributed.security import Security

    if role not in ROLES:
        raise ValueError(f"role {role!r}")
    return Security(
        tls_ca_file=str(ca), require_encryption=True, **{f"tls_{role}_cert": str(cert), f"tls_{role}_key": str(key)}
    )
