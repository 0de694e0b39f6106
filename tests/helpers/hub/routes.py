"""The HTTP request handler: the hub's routes (repo info, tree, paths-info, resolve, the CDN leg), Range, faults."""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import socket
import struct
import uuid
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from tests.helpers.hub.faults import HTML_PAGE, Fault, raise_status_fault
from tests.helpers.hub.repo import CHUNK, File, HubError, Snapshot

if TYPE_CHECKING:
    from tests.helpers.hub.server import FakeHub


def flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like the real hub; every response carries a Content-Length
    server_version = "FakeHub"
    timeout = 30  # drop idle keep-alive connections rather than hold a thread forever
    hub: FakeHub  # set on the subclass that FakeHub.start() makes
    _entry: dict | None = None  # this request's FakeHub.requests entry; None for a malformed request line

    def log_message(self, format, *args) -> None:
        pass  # FakeHub.requests is the log; stderr stays quiet (and never sees a token)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_GET

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._entry is not None:
            self._entry["status"] = code
        super().send_response(code, message)
        self.send_header("X-Request-Id", uuid.uuid4().hex)

    def _handle(self) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        self._entry = {"method": self.command, "path": split.path, "query": query}
        # Header names in canonical case (httpx sends `authorization`), so a test can look up "Authorization".
        headers = {"-".join(w.capitalize() for w in k.split("-")): v for k, v in self.headers.items()}
        self._entry |= {"headers": headers, "status": None}
        self.hub._record(self._entry)
        # Read the body first: an unread POST body would be parsed as the next request on this connection.
        self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self._route([s for s in split.path.split("/") if s], query)
        except HubError as err:
            body = json.dumps({"error": err.message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": err.message} | err.headers
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, body, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left mid-body, e.g. after its own read timeout

    def _route(self, segs: list[str], query: dict[str, list[str]]) -> None:
        if segs[:1] == ["cdn-lfs"] and len(segs) >= 2 and self.command in ("GET", "HEAD"):
            return self._cdn(segs[1], unquote("/".join(segs[2:])))  # signed-URL leg: no token, like a CDN
        self.hub._check_auth(self.headers.get("Authorization"))
        if segs[:2] in (["api", "datasets"], ["api", "models"]) and len(segs) > 2:
            return self._api(segs[2:], query, models=segs[1] == "models")
        models = segs[:1] != ["datasets"]  # a model repo's files are at /{repo}/resolve/...
        if self.command in ("GET", "HEAD") and segs:
            repo_id, rest = self.hub._split_repo(segs[0 if models else 1 :], models)
            if len(rest) >= 3 and rest[0] == "resolve":
                snap = self.hub._snapshot(repo_id, unquote(rest[1]), models)
                return self._resolve(snap, unquote("/".join(rest[2:])))
        raise HubError(404, "Not Found")

    def _api(self, segs: list[str], query: dict[str, list[str]], models: bool = False) -> None:
        repo_id, rest = self.hub._split_repo(segs, models)
        action = rest[0] if rest else "revision"
        if action == "revision" and self.command == "GET":
            snap = self.hub._snapshot(repo_id, unquote("/".join(rest[1:])) if rest else None, models)
            info = snap.info(flag(query, "blobs"), "auto" if self.hub.token else False)
            if query.get("expand"):  # only the listed properties, as the hub does
                info = {k: v for k, v in info.items() if k in {"_id", "id", *query["expand"]}}
            return self._send_json(info)
        if action == "tree" and len(rest) >= 2 and self.command == "GET":
            snap = self.hub._snapshot(repo_id, unquote(rest[1]), models)
            return self._tree(snap, unquote("/".join(rest[2:])).strip("/"), query)
        if action == "paths-info" and len(rest) == 2 and self.command == "POST":
            snap = self.hub._snapshot(repo_id, unquote(rest[1]), models)
            return self._paths_info(snap)
        raise HubError(404, "Not Found")

    def _tree(self, snap: Snapshot, prefix: str, query: dict[str, list[str]]) -> None:
        paths = snap.tree(prefix, flag(query, "recursive"))
        if paths is None:
            raise HubError(404, f"{prefix} does not exist on {snap.revision}", "EntryNotFound")
        try:
            start = int(base64.urlsafe_b64decode(query.get("cursor", ["MA=="])[-1]))
        except ValueError as err:
            raise HubError(400, "Invalid cursor") from err
        stop = start + max(1, self.hub.page_size)
        headers = {}
        if stop < len(paths):  # more to come: a GitHub-style Link header, which huggingface_hub follows
            params = {k: v[-1] for k, v in query.items() if k != "cursor"}
            params["cursor"] = base64.urlsafe_b64encode(str(stop).encode()).decode()
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{urlencode(params)}>; rel="next"'
        expand = flag(query, "expand")
        self._send_json([snap.entry(p, expand) for p in paths[start:stop]], headers)

    def _paths_info(self, snap: Snapshot) -> None:
        # huggingface_hub posts a form (`paths=a&paths=b&expand=false`); other clients may post JSON.
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = json.loads(self._body or b"{}")
            paths, expand = body.get("paths", []), bool(body.get("expand", False))
        else:
            form = parse_qs(self._body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), flag(form, "expand")
        known = snap.dirs() | set(snap.files)
        wanted = [p.strip("/") for p in ([paths] if isinstance(paths, str) else paths)]
        self._send_json([snap.entry(p, expand) for p in wanted if p in known])

    def _resolve(self, snap: Snapshot, path: str) -> None:
        file = snap.files.get(path)
        if file is None:  # X-Repo-Commit lets huggingface_hub cache the file's absence
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": snap.commit})
        redirect = self.hub.cdn_redirect and file.sha256 is not None
        fault = self.hub._take_fault(path, serving_body=self.command == "GET" and not redirect)
        raise_status_fault(fault)
        headers = {"X-Repo-Commit": snap.commit, "ETag": f'"{file.etag}"'}
        if file.sha256:  # what hf_hub_download prefers to ETag / Content-Length (get_hf_file_metadata)
            headers |= {"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size)}
        if redirect:
            port = self.server.server_address[1]
            headers["Location"] = f"http://localhost:{port}/cdn-lfs/{file.sha256}/{quote(path)}"
            return self._send(302, b"", headers)
        self._serve_file(file, headers, fault)

    def _cdn(self, sha256: str, path: str) -> None:
        file = self.hub._blobs.get(sha256)
        if file is None:
            raise HubError(404, "NoSuchKey")
        fault = self.hub._take_fault(path or file.path, serving_body=self.command == "GET")
        raise_status_fault(fault)
        self._serve_file(file, {"ETag": f'"{sha256}"'}, fault)

    def _serve_file(self, file: File, headers: dict, fault: Fault | None) -> None:
        """Send the file or its requested Range, applying a body fault if one was drawn."""
        if fault is not None and fault.kind == "html":
            return self._send(200, HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        span = self._byte_range(file.size)
        start, end = span or (0, file.size - 1)
        length = sent = end - start + 1
        if fault is not None and fault.kind == "truncate":
            length = sent = int(length * float(fault.options.get("fraction", 0.5)))
        elif fault is not None:  # reset: about half the body; stall: a little, so that it is surely in flight
            sent = length // 2 if fault.kind == "reset" else min(length // 2, 64 * 1024)
        self.send_response(206 if span else 200)
        content_type = mimetypes.guess_type(file.path)[0] or "application/octet-stream"
        headers |= {"Content-Type": content_type, "Accept-Ranges": "bytes", "Content-Length": str(length)}
        name = quote(file.path.rsplit("/", 1)[-1])
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{name}; filename=\"{name}\";"
        if span:
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{file.size}"
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with file.source.open("rb") as f:
            f.seek(start)
            while sent > 0 and (chunk := f.read(min(CHUNK, sent))):
                self.wfile.write(chunk)
                sent -= len(chunk)
        if fault is not None and fault.kind in ("reset", "stall"):
            self._break_connection(fault)

    def _byte_range(self, size: int) -> tuple[int, int] | None:
        """The (first, last) byte of a `Range: bytes=a-b | a- | -n` header; None serves the whole file."""
        match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", self.headers.get("Range") or "")
        if match is None or match.group(1) == match.group(2) == "":
            return None  # absent, malformed or multi-range: RFC 9110 lets a server ignore it
        unsatisfiable = HubError(
            416, "Requested Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"}
        )
        if match.group(1) == "":  # suffix range: the last n bytes
            if int(match.group(2)) == 0 or size == 0:
                raise unsatisfiable
            return max(size - int(match.group(2)), 0), size - 1
        start = int(match.group(1))
        if start >= size:
            raise unsatisfiable
        end = int(match.group(2)) if match.group(2) else size - 1
        return None if start > end else (start, min(end, size - 1))

    def _break_connection(self, fault: Fault) -> None:
        self.close_connection = True
        if fault.kind == "stall":
            self.hub._closing.wait(float(fault.options.get("seconds", 5)))
            return
        # SO_LINGER with a zero timeout turns close() into a TCP RST: the client sees a reset, not a clean EOF.
        # rfile holds a reference to the socket, so it must be closed too for the close to take effect now.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()

    def _send_json(self, obj, headers: dict | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"} | (headers or {}))

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in (headers | {"Content-Length": str(len(body))}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
