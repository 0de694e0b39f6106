"""FakeHub: a local stand-in for huggingface.co serving dataset repos from folders, with fault injection
(the routes it answers are listed in tests/helpers/hub/__init__.py)."""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hmac
import os
import re
import shutil
import socketserver
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from tests.helpers.hub.env import constant_patches, hub_env, set_env
from tests.helpers.hub.faults import BODY_FAULTS, FAULT_OPTIONS, STATUS_FAULTS, Fault
from tests.helpers.hub.repo import File, HubError, Snapshot, scan_folder, sha1
from tests.helpers.hub.routes import Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not keep the test process alive

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can hang on a machine without network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def _drop_transformers_hf_api() -> None:
    """Forget transformers' shared HfApi, which keeps the endpoint it was made with (FakeHub.use)."""
    module = sys.modules.get("transformers.utils.hub")
    if module is not None and hasattr(module, "_hf_api"):
        module._hf_api = None


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
        self._repos: dict[str, dict[str, Snapshot]] = {}  # dataset repos
        self._models: dict[str, dict[str, Snapshot]] = {}  # model repos
        self._blobs: dict[str, File] = {}  # by sha256, for the CDN leg
        self._faults: list[Fault] = []
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
        return self._add("datasets", repo_id, folder, revision, commit)

    def add_model(self, repo_id: str, folder: Path, revision: str = "main", commit: str | None = None) -> str:
        """As add_dataset, for a model repo (/api/models/..., /{repo}/resolve/...): what open_clip's hf-hub:
        ids and transformers' from_pretrained download from."""
        return self._add("models", repo_id, folder, revision, commit)

    def _add(self, kind: str, repo_id: str, folder: Path, revision: str, commit: str | None) -> str:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"FakeHub.add_dataset({repo_id!r}): {folder} is not a directory")
        if commit is not None and not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError(f"FakeHub.add_dataset({repo_id!r}): commit must be 40 lowercase hex digits")
        files = scan_folder(folder)
        if commit is None:
            commit = sha1("".join(f"{f.path}\0{f.git_oid}\n" for f in files.values()).encode())
        with self._lock:
            repos = self._repos if kind == "datasets" else self._models
            repos.setdefault(repo_id, {})[revision] = Snapshot(repo_id, revision, commit, files)
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
            self._faults.append(Fault(path, kind, times, dict(kw)))

    def start(self) -> FakeHub:
        if self._server is None:
            self._closing.clear()
            handler = type("_BoundHandler", (Handler,), {"hub": self})
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
        block keep their old endpoint; transformers' shared one (transformers.utils.hub.hf_api(), made on
        first use) is dropped before and after the block, else a tokenizer load in a later block would call
        this server once it has gone and wait out ~45 s of retries. `token` sets HF_TOKEN for the block (any
        real HF_TOKEN is hidden).
        """
        import huggingface_hub.constants as hf_constants  # before the env changes, so saved values are the real ones
        from huggingface_hub import hf_api
        from huggingface_hub.utils import _cache_assets, _cache_manager, _http

        home = Path(tempfile.mkdtemp(prefix="fakehub-home-"))
        env = hub_env(self.url, home, token)
        patches = constant_patches(hf_constants, self.url, home) + [
            (hf_api.api, "endpoint", self.url),
            (_cache_manager, "HF_HUB_CACHE", str(home / "hub")),
            (_cache_assets, "HF_ASSETS_CACHE", str(home / "assets")),
        ]
        saved_env = {name: os.environ.get(name) for name in env}
        patches = [(obj, name, value) for obj, name, value in patches if hasattr(obj, name)]
        saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        try:
            set_env(env)
            for obj, name, value in patches:
                setattr(obj, name, value)
            _http.close_session()  # its pooled connections may point at a server that has gone
            _drop_transformers_hf_api()
            yield self
        finally:
            _http.close_session()
            _drop_transformers_hf_api()
            for obj, name, value in reversed(saved_attrs):
                setattr(obj, name, value)
            set_env(saved_env)
            shutil.rmtree(home, ignore_errors=True)

    # --- used by the request handler ---

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def _check_auth(self, header: str | None) -> None:
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if not header or not hmac.compare_digest(header.encode(), expected.encode()):
                raise HubError(401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="fakehub"'})
            return
        if self.token is None:
            return
        if not header or not header.startswith("Bearer "):
            message = "Access to this dataset is restricted. You must be authenticated to access it."
            raise HubError(401, message, "GatedRepo")
        if not hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode()):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _split_repo(self, segments: list[str], models: bool = False) -> tuple[str, list[str]]:
        """Split raw path segments into (repo_id, rest); ids are usually `namespace/name`, but may be one part."""
        parts = [unquote(s) for s in segments]
        repos = self._models if models else self._repos
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in repos:
            return f"{parts[0]}/{parts[1]}", segments[2:]
        if parts and parts[0] in repos:
            return parts[0], segments[1:]
        if len(parts) < 2:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return f"{parts[0]}/{parts[1]}", segments[2:]

    def _snapshot(self, repo_id: str, revision: str | None, models: bool = False) -> Snapshot:
        with self._lock:
            revisions = dict((self._models if models else self._repos).get(repo_id, {}))
        if not revisions:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if revision is None:
            return revisions.get("main") or next(iter(revisions.values()))
        if revision in revisions:
            return revisions[revision]
        for snap in revisions.values():
            if snap.commit == revision:
                return snap
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _take_fault(self, path: str, serving_body: bool) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                eligible = fault.kind in STATUS_FAULTS or serving_body
                if fault.remaining > 0 and eligible and fnmatch.fnmatchcase(path, fault.pattern):
                    fault.remaining -= 1
                    return fault
        return None
