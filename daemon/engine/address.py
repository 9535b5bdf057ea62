"""A Dask scheduler address as the configuration and ``cloakd worker`` take it, and the transport rule.

Photos are biometric data: they may travel in clear text only over the loopback interface. An address is
``tcp://HOST:PORT`` or ``tls://HOST:PORT``; a ``tcp://`` address whose host is not loopback (``localhost``,
127.0.0.0/8, ``::1``) is refused unless the administrator says ``insecure``. Host names are not resolved:
only a literal loopback address or ``localhost`` counts as loopback.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})")
EXAMPLE = "tls://gpu-box.example.org:8786"


@dataclass(frozen=True)
class Address:
    protocol: str  # "tcp" or "tls"
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """The address in ``text``; ValueError saying what a valid one looks like."""
    m = _ADDRESS.fullmatch(text.strip())
    if not m or not 0 < int(m[3]) < 65536:
        raise ValueError(f"{text!r} is not a scheduler address (tcp://HOST:PORT or tls://HOST:PORT, e.g. {EXAMPLE})")
    return Address(m[1], m[2], int(m[3]))


def clear_text_refusal(address: Address, insecure: bool) -> str | None:
    """Why photos may not travel to ``address`` (None if they may)."""
    if address.protocol == "tls" or address.loopback or insecure:
        return None
    return f"{address} is another machine over plain TCP: photos (biometric data) would cross the network unencrypted"
