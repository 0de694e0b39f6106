"""A local stand-in for huggingface.co: serves dataset repos from folders over HTTP, with fault injection.

Tests register folders as dataset repos on a `FakeHub`, start it on 127.0.0.1 and point huggingface_hub at it
with `hub.use()`. Routes, query parameters and headers follow what huggingface_hub 2.4 sends and reads (checked
against its hf_api.py, file_download.py and utils/_http.py):

    GET      /api/datasets/{repo}[/revision/{rev}]       repo info: HfApi.repo_info / dataset_info
    GET      /api/datasets/{repo}/tree/{rev}[/{path}]    listing: `recursive`, `expand`, `cursor` + Link pagination
    POST     /api/datasets/{repo}/paths-info/{rev}       form body with repeated `paths` (JSON accepted too)
    GET|HEAD /datasets/{repo}/resolve/{rev}/{path}       file bytes (hf_hub_url, hf_hub_download), Range
    GET|HEAD /cdn-lfs/{sha256}/{path}                    only with cdn_redirect=True: the "CDN" leg of a redirect

huggingface_hub percent-encodes revisions with safe="" (`refs%2Fconvert%2Fparquet`), so a revision is always one
path segment. Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), which is
what `hf_raise_for_status` turns into RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError
and GatedRepoError; a bare 401/404 without it would surface as a plain HfHubHTTPError.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import hmac
import json
import mimetypes
import os
import re
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

CHUNK = 256 * 1024
# Suffixes the hub keeps as plain git blobs; everything else (tars, parquet, images) is LFS, as on BIOMEDICA.
GIT_SUFFIXES = frozenset({".md", ".json", ".jsonl", ".txt", ".yaml", ".yml", ".py", ".csv", ".gitattributes"})
STATUS_FAULTS = {"404": 404, "429": 429, "500": 500, "502": 502, "503": 503}
BODY_FAULTS = frozenset({"reset", "stall", "truncate", "html"})
FAULT_OPTIONS = {"429": {"retry_after"}, "stall": {"seconds"}, "truncate": {"fraction"}}
COMMIT_DATE = "2024-06-01T00:00:00.000Z"  # fixed so that repo info is reproducible
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>The proxy could not reach the upstream server.</p></body></html>\n"
)


@dataclasses.dataclass(frozen=True)
class _File:
    path: str
    source: Path
    size: int
    git_oid: str  # what the hub reports as `oid`: the git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None  # set for LFS files: their ETag and `lfs.oid`

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_oid

    def lfs(self) -> dict | None:
        return None if self.sha256 is None else {"oid": self.sha256, "size": self.size, "pointerSize": 134}


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    repo_id: str
    revision: str
    commit: str
    files: dict[str, _File]

    def dirs(self) -> set[str]:
        return {p.rsplit("/", i)[0] for p in self.files for i in range(1, p.count("/") + 1)}

    def entry(self, path: str, expand: bool) -> dict:
        """One tree / paths-info entry, with the field names hf_api.RepoFile and RepoFolder read."""
        file = self.files.get(path)
        if file is None:
            out = {"type": "directory", "oid": _sha1(f"tree {self.commit} {path}".encode()), "size": 0}
        else:
            out = {"type": "file", "oid": file.git_oid, "size": file.size}
            if file.lfs():
                out["lfs"] = file.lfs()
            if expand:
                scan = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None}}
                out["securityFileStatus"] = scan | {"pickleImportScan": None}
        out["path"] = path
        if expand:
            out["lastCommit"] = {"id": self.commit, "title": "Upload shards", "date": COMMIT_DATE}
        return out

    def tree(self, prefix: str, recursive: bool) -> list[str] | None:
        """Paths under `prefix` (direct children unless recursive); None if `prefix` is not a folder."""
        if prefix and prefix not in self.dirs():
            return None
        base = f"{prefix}/" if prefix else ""
        paths = [p for p in sorted(self.dirs() | set(self.files)) if p.startswith(base)]
        return paths if recursive else [p for p in paths if "/" not in p[len(base) :]]

    def info(self, blobs: bool, gated: str | bool) -> dict:
        """Repo info as /api/datasets/{repo} returns it: the fields hf_api.DatasetInfo reads."""
        siblings = []
        for file in self.files.values():
            sibling = {"rfilename": file.path}
            if blobs:  # `files_metadata=True` sends blobs=true
                sibling |= {"size": file.size, "blobId": file.git_oid}
                if file.sha256:
                    sibling["lfs"] = {"sha256": file.sha256, "size": file.size, "pointerSize": 134}
            siblings.append(sibling)
        return {
            "_id": _sha1(self.repo_id.encode())[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.commit,
            "lastModified": COMMIT_DATE,
            "createdAt": COMMIT_DATE,
            "private": False,
            "gated": gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in self.files.values()),
        }


@dataclasses.dataclass
class _Fault:
    pattern: str
    kind: str
    remaining: int
    options: dict


class _HubError(Exception):
    """An HTTP error response, shaped like the hub's: JSON `{"error": ...}` plus X-Error-* headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _scan_file(source: Path, rel: str) -> _File:
    """Hash one file in chunks (shards can be tens of MB) into the oids the hub would report."""
    size = source.stat().st_size
    blob, sha256 = hashlib.sha1(b"blob %d\0" % size), hashlib.sha256()
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            blob.update(chunk)
            sha256.update(chunk)
    if Path(rel).suffix in GIT_SUFFIXES or rel == ".gitattributes":
        return _File(rel, source, size, blob.hexdigest(), None)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256.hexdigest()}\nsize {size}\n"
    pointer_oid = _sha1(b"blob %d\0%s" % (len(pointer), pointer.encode()))
    return _File(rel, source, size, pointer_oid, sha256.hexdigest())


def _scan_folder(folder: Path) -> dict[str, _File]:
    files = {}
    for source in sorted(folder.rglob("*")):
        rel = source.relative_to(folder).as_posix()
        if source.is_file() and ".git" not in rel.split("/"):
            files[rel] = _scan_file(source, rel)
    return files


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not keep the test process alive

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can hang on a machine without network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class FakeHub:
    """A local stand-in for huggingface.co serving dataset repos from folders, with fault injection.

    token: if set, every request except the CDN leg must carry `Authorization: Bearer <token>`, else 401 with
        `X-Error-Code: GatedRepo` (huggingface_hub raises GatedRepoError); a wrong token gets the hub's
        "Invalid credentials" 401 (a plain HfHubHTTPError).
    page_size: entries per /tree page; more entries are paginated with a `Link: <...>; rel="next"` header.
    cdn_redirect: answer resolve requests for LFS files with a 302 to `http://localhost:<port>/cdn-lfs/...` like
        the real hub's redirect to its CDN. `localhost` is a different origin from `127.0.0.1`, so
        huggingface_hub treats it as a CDN: it reads the metadata from the 302 and drops the token.
    basic_auth: (user, password): instead of a token, every request except the CDN leg must carry that HTTP
        Basic `Authorization`, else 401 with `WWW-Authenticate: Basic` (a plain web server with a password).
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        port: int = 0,
        page_size: int = 1000,
        cdn_redirect: bool = False,
        basic_auth: tuple[str, str] | None = None,
    ):
        self.token = token
        self.basic_auth = basic_auth
        self.page_size = page_size
        self.cdn_redirect = cdn_redirect
        # method, path (as sent, still %-encoded), query (parse_qs), headers (Canonical-Case names), status
        self.requests: list[dict] = []
        self._port = port
        self._repos: dict[str, dict[str, _Snapshot]] = {}
        self._blobs: dict[str, _File] = {}  # by sha256, for the CDN leg
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()  # wakes stalled handlers at stop()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(
                "FakeHub.url: the server is not running; call start() or use `with FakeHub():`"
            )
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_dataset(
        self, repo_id: str, folder: Path, revision: str = "main", commit: str | None = None
    ) -> str:
        """Serve `folder`'s files (recursively, by relative path) as dataset `repo_id` at branch `revision`.

        Files are hashed now and read at request time, so do not change them afterwards. Returns the commit
        sha, which requests may use instead of the branch name; without `commit` it is derived from content.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"FakeHub.add_dataset({repo_id!r}): {folder} is not a directory")
        if commit is not None and not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError(f"FakeHub.add_dataset({repo_id!r}): commit must be 40 lowercase hex digits")
        files = _scan_folder(folder)
        if commit is None:
            commit = _sha1("".join(f"{f.path}\0{f.git_oid}\n" for f in files.values()).encode())
        with self._lock:
            self._repos.setdefault(repo_id, {})[revision] = _Snapshot(repo_id, revision, commit, files)
            for file in files.values():
                if file.sha256:
                    self._blobs.setdefault(file.sha256, file)
        return commit

    def fail(self, path: str, kind: str, times: int = 1, **kw) -> None:
        """Make the next `times` requests for repo files matching `path` (fnmatch) fail with `kind`.

        Status kinds ("404", "429" [retry_after=s], "500", "502", "503") hit GET and HEAD alike. Body kinds
        ("reset", "stall" [seconds=5], "truncate" [fraction=0.5], "html") hit only requests that send the bytes:
        a GET, on the CDN leg when cdn_redirect is on; a HEAD passes them by. Faults are used in queue order.
        "reset" ends in a TCP RST (httpx ReadError, requests ChunkedEncodingError, urllib ConnectionResetError,
        curl exit 56); "stall" closes cleanly after its sleep, so `seconds=0` is an early EOF instead (httpx
        RemoteProtocolError, urllib IncompleteRead, curl exit 18).
        """
        kind = str(kind)
        if kind not in STATUS_FAULTS and kind not in BODY_FAULTS:
            allowed = sorted(STATUS_FAULTS) + sorted(BODY_FAULTS)
            raise ValueError(f"FakeHub.fail: unknown fault kind {kind!r}; use one of {allowed}")
        unknown = set(kw) - FAULT_OPTIONS.get(kind, set())
        if unknown or times < 1:
            raise ValueError(f"FakeHub.fail({kind!r}): bad times={times} or options {sorted(unknown)}")
        with self._lock:
            self._faults.append(_Fault(path, kind, times, dict(kw)))

    def start(self) -> FakeHub:
        if self._server is None:
            self._closing.clear()
            handler = type("_BoundHandler", (_Handler,), {"hub": self})
            self._server = _Server(("127.0.0.1", self._port), handler)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-hub",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._closing.set()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def use(self, token: str | None = None) -> Iterator[FakeHub]:
        """Point huggingface_hub at this server for the block, with a throwaway HF_HOME; restore all after.

        huggingface_hub reads HF_ENDPOINT once, at import, into `constants.ENDPOINT` (and the module-level
        `hf_api.api` used by `huggingface_hub.list_repo_files` & co. copies it at import), so setting the
        environment variable alone is not enough: the constants are patched too. HfApi objects made before the
        block keep their old endpoint. `token` sets HF_TOKEN for the block (any real HF_TOKEN is hidden).
        """
        import huggingface_hub.constants as hf_constants  # before the env changes, so saved values are the real ones
        from huggingface_hub import hf_api
        from huggingface_hub.utils import _cache_assets, _cache_manager, _http

        home = Path(tempfile.mkdtemp(prefix="fakehub-home-"))
        env = _hub_env(self.url, home, token)
        patches = _constant_patches(hf_constants, self.url, home) + [
            (hf_api.api, "endpoint", self.url),
            (_cache_manager, "HF_HUB_CACHE", str(home / "hub")),
            (_cache_assets, "HF_ASSETS_CACHE", str(home / "assets")),
        ]
        saved_env = {name: os.environ.get(name) for name in env}
        patches = [(obj, name, value) for obj, name, value in patches if hasattr(obj, name)]
        saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        try:
            _set_env(env)
            for obj, name, value in patches:
                setattr(obj, name, value)
            _http.close_session()  # its pooled connections may point at a server that has gone
            yield self
        finally:
            _http.close_session()
            for obj, name, value in reversed(saved_attrs):
                setattr(obj, name, value)
            _set_env(saved_env)
            shutil.rmtree(home, ignore_errors=True)

    # --- used by the request handler ---

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def _check_auth(self, header: str | None) -> None:
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if not header or not hmac.compare_digest(header.encode(), expected.encode()):
                raise _HubError(401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="fakehub"'})
            return
        if self.token is None:
            return
        if not header or not header.startswith("Bearer "):
            message = "Access to this dataset is restricted. You must be authenticated to access it."
            raise _HubError(401, message, "GatedRepo")
        if not hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode()):
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _split_repo(self, segments: list[str]) -> tuple[str, list[str]]:
        """Split raw path segments into (repo_id, rest); ids are usually `namespace/name`, but may be one part."""
        parts = [unquote(s) for s in segments]
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in self._repos:
            return f"{parts[0]}/{parts[1]}", segments[2:]
        if parts and parts[0] in self._repos:
            return parts[0], segments[1:]
        if len(parts) < 2:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return f"{parts[0]}/{parts[1]}", segments[2:]

    def _snapshot(self, repo_id: str, revision: str | None) -> _Snapshot:
        with self._lock:
            revisions = dict(self._repos.get(repo_id, {}))
        if not revisions:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if revision is None:
            return revisions.get("main") or next(iter(revisions.values()))
        if revision in revisions:
            return revisions[revision]
        for snap in revisions.values():
            if snap.commit == revision:
                return snap
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _take_fault(self, path: str, serving_body: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                eligible = fault.kind in STATUS_FAULTS or serving_body
                if fault.remaining > 0 and eligible and fnmatch.fnmatchcase(path, fault.pattern):
                    fault.remaining -= 1
                    return fault
        return None


def _hub_env(url: str, home: Path, token: str | None) -> dict[str, str | None]:
    """Environment for the `use()` block; None unsets. Read by code that looks at os.environ at call time."""
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
    env: dict[str, str | None] = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "HF_TOKEN": token,
    }
    unset = "HF_HUB_OFFLINE TRANSFORMERS_OFFLINE HF_DATASETS_OFFLINE HUGGING_FACE_HUB_TOKEN HF_TOKEN_PATH"
    unset += " HF_OIDC_RESOURCE HUGGINGFACE_HUB_CACHE HF_ASSETS_CACHE HF_XET_CACHE"
    return env | dict.fromkeys(unset.split())


def _constant_patches(c, url: str, home: Path) -> list[tuple[object, str, object]]:
    """huggingface_hub.constants values computed from the environment at import time."""
    values = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": c.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    return [(c, name, value) for name, value in values.items() if hasattr(c, name)]


def _set_env(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


class _Handler(BaseHTTPRequestHandler):
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
        except _HubError as err:
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
        if segs[:2] == ["api", "datasets"] and len(segs) > 2:
            return self._api(segs[2:], query)
        if segs[:1] == ["datasets"] and self.command in ("GET", "HEAD"):
            repo_id, rest = self.hub._split_repo(segs[1:])
            if len(rest) >= 3 and rest[0] == "resolve":
                snap = self.hub._snapshot(repo_id, unquote(rest[1]))
                return self._resolve(snap, unquote("/".join(rest[2:])))
        raise _HubError(404, "Not Found")

    def _api(self, segs: list[str], query: dict[str, list[str]]) -> None:
        repo_id, rest = self.hub._split_repo(segs)
        action = rest[0] if rest else "revision"
        if action == "revision" and self.command == "GET":
            snap = self.hub._snapshot(repo_id, unquote("/".join(rest[1:])) if rest else None)
            info = snap.info(_flag(query, "blobs"), "auto" if self.hub.token else False)
            if query.get("expand"):  # only the listed properties, as the hub does
                info = {k: v for k, v in info.items() if k in {"_id", "id", *query["expand"]}}
            return self._send_json(info)
        if action == "tree" and len(rest) >= 2 and self.command == "GET":
            snap = self.hub._snapshot(repo_id, unquote(rest[1]))
            return self._tree(snap, unquote("/".join(rest[2:])).strip("/"), query)
        if action == "paths-info" and len(rest) == 2 and self.command == "POST":
            snap = self.hub._snapshot(repo_id, unquote(rest[1]))
            return self._paths_info(snap)
        raise _HubError(404, "Not Found")

    def _tree(self, snap: _Snapshot, prefix: str, query: dict[str, list[str]]) -> None:
        paths = snap.tree(prefix, _flag(query, "recursive"))
        if paths is None:
            raise _HubError(404, f"{prefix} does not exist on {snap.revision}", "EntryNotFound")
        try:
            start = int(base64.urlsafe_b64decode(query.get("cursor", ["MA=="])[-1]))
        except ValueError as err:
            raise _HubError(400, "Invalid cursor") from err
        stop = start + max(1, self.hub.page_size)
        headers = {}
        if stop < len(paths):  # more to come: a GitHub-style Link header, which huggingface_hub follows
            params = {k: v[-1] for k, v in query.items() if k != "cursor"}
            params["cursor"] = base64.urlsafe_b64encode(str(stop).encode()).decode()
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{urlencode(params)}>; rel="next"'
        expand = _flag(query, "expand")
        self._send_json([snap.entry(p, expand) for p in paths[start:stop]], headers)

    def _paths_info(self, snap: _Snapshot) -> None:
        # huggingface_hub posts a form (`paths=a&paths=b&expand=false`); other clients may post JSON.
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = json.loads(self._body or b"{}")
            paths, expand = body.get("paths", []), bool(body.get("expand", False))
        else:
            form = parse_qs(self._body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _flag(form, "expand")
        known = snap.dirs() | set(snap.files)
        wanted = [p.strip("/") for p in ([paths] if isinstance(paths, str) else paths)]
        self._send_json([snap.entry(p, expand) for p in wanted if p in known])

    def _resolve(self, snap: _Snapshot, path: str) -> None:
        file = snap.files.get(path)
        if file is None:  # X-Repo-Commit lets huggingface_hub cache the file's absence
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": snap.commit})
        redirect = self.hub.cdn_redirect and file.sha256 is not None
        fault = self.hub._take_fault(path, serving_body=self.command == "GET" and not redirect)
        _raise_status_fault(fault)
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
            raise _HubError(404, "NoSuchKey")
        fault = self.hub._take_fault(path or file.path, serving_body=self.command == "GET")
        _raise_status_fault(fault)
        self._serve_file(file, {"ETag": f'"{sha256}"'}, fault)

    def _serve_file(self, file: _File, headers: dict, fault: _Fault | None) -> None:
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
        unsatisfiable = _HubError(
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

    def _break_connection(self, fault: _Fault) -> None:
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


def _raise_status_fault(fault: _Fault | None) -> None:
    if fault is None or fault.kind not in STATUS_FAULTS:
        return
    status, headers = STATUS_FAULTS[fault.kind], {}
    if fault.kind == "429" and "retry_after" in fault.options:
        headers["Retry-After"] = str(fault.options["retry_after"])
    code = "EntryNotFound" if fault.kind == "404" else None
    raise _HubError(status, f"injected fault: HTTP {status}", code, headers)
