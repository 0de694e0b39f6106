"""Injected faults: the kinds FakeHub.fail accepts, one queued fault, and the HTTP error a status fault becomes."""

from __future__ import annotations

import dataclasses

from tests.helpers.hub.repo import HubError

STATUS_FAULTS = {"404": 404, "429": 429, "500": 500, "502": 502, "503": 503}
BODY_FAULTS = frozenset({"reset", "stall", "truncate", "html"})
FAULT_OPTIONS = {"429": {"retry_after"}, "stall": {"seconds"}, "truncate": {"fraction"}}
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>The proxy could not reach the upstream server.</p></body></html>\n"
)


@dataclasses.dataclass
class Fault:
    pattern: str
    kind: str
    remaining: int
    options: dict


def raise_status_fault(fault: Fault | None) -> None:
    if fault is None or fault.kind not in STATUS_FAULTS:
        return
    status, headers = STATUS_FAULTS[fault.kind], {}
    if fault.kind == "429" and "retry_after" in fault.options:
        headers["Retry-After"] = str(fault.options["retry_after"])
    code = "EntryNotFound" if fault.kind == "404" else None
    raise HubError(status, f"injected fault: HTTP {status}", code, headers)
