"""Which credentials a shard request carries: the HF token only to the hub itself, a URL's own
`user:password@` as HTTP Basic auth.

huggingface_hub attaches the token for its own calls; our ShardReader streams with urllib, so it decides
here. The hub is HF_ENDPOINT compared by scheme, host and port (default ports normalised) with the
URL's path under the endpoint's path: a string-prefix test would hand the token to
https://huggingface.co.evil.example/ or to https://huggingface.co@evil.example/. urllib sends no Basic
auth from a URL's userinfo (it takes `user:pw@host` for the host), so the userinfo becomes a header and is
stripped from the URL requested.
"""

from __future__ import annotations

import base64
import posixpath
import urllib.parse

from huggingface_hub import constants
from huggingface_hub.utils import build_hf_headers

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None, str] | None:
    """(scheme, host, port, path) as a request to `url` would go; None if it has userinfo or a bad port."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if "@" in parts.netloc or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    path = posixpath.normpath(parts.path) if parts.path else ""  # /hf/../x is not under /hf
    return scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme), path


def is_hub_url(url: str, endpoint: str) -> bool:
    """Does `url` address the hub at `endpoint` (HF_ENDPOINT): same scheme, host and port, and a path under
    the endpoint's own path? A string-prefix test would pass https://huggingface.co.evil.example/."""
    here, hub = _origin(url), _origin(endpoint)
    if here is None or hub is None or here[:3] != hub[:3]:
        return False
    base = hub[3].rstrip("/")  # normpath leaves "/" for the bare host
    return not base or here[3] == base or here[3].startswith(base + "/")


def split_userinfo(url: str) -> tuple[str, str | None]:
    """(url without user:password@, the Basic Authorization value they make, or None)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), "Basic " + base64.b64encode(
        pair.encode()
    ).decode("ascii")


def auth_headers(url: str) -> dict[str, str]:
    """Headers for a request to `url`: its own Basic auth, else the hub's (token, user agent) when `url`
    is on HF_ENDPOINT (read at call time: tests and mirrors set it late), else none (a mirror, a CDN)."""
    _, basic = split_userinfo(url)
    if basic is not None:
        return {"authorization": basic}
    return build_hf_headers() if is_hub_url(url, constants.ENDPOINT) else {}
