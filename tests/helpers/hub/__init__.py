"""A local stand-in for huggingface.co: serves dataset and model repos from folders over HTTP, with faults.

Tests register folders as dataset repos on a `FakeHub`, start it on 127.0.0.1 and point huggingface_hub at it
with `hub.use()`. Routes, query parameters and headers follow what huggingface_hub 2.4 sends and reads (checked
against its hf_api.py, file_download.py and utils/_http.py):

    GET      /api/datasets/{repo}[/revision/{rev}]       repo info: HfApi.repo_info / dataset_info
    GET      /api/datasets/{repo}/tree/{rev}[/{path}]    listing: `recursive`, `expand`, `cursor` + Link pagination
    POST     /api/datasets/{repo}/paths-info/{rev}       form body with repeated `paths` (JSON accepted too)
    GET|HEAD /datasets/{repo}/resolve/{rev}/{path}       file bytes (hf_hub_url, hf_hub_download), Range
    GET|HEAD /cdn-lfs/{sha256}/{path}                    only with cdn_redirect=True: the "CDN" leg of a redirect

Model repos (`add_model`: what open_clip's hf-hub: ids and transformers' from_pretrained read) answer the same
routes under /api/models/{repo}/... and /{repo}/resolve/{rev}/{path}.

huggingface_hub percent-encodes revisions with safe="" (`refs%2Fconvert%2Fparquet`), so a revision is always one
path segment. Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), which is
what `hf_raise_for_status` turns into RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError
and GatedRepoError; a bare 401/404 without it would surface as a plain HfHubHTTPError.

Modules: server.py (FakeHub: start/stop, repos, faults, `use()`), routes.py (the HTTP request handler),
repo.py (a served repo: files, oids, listings, info), faults.py (injected faults), env.py (pointing
huggingface_hub at the server).
"""

from tests.helpers.hub.server import FakeHub

__all__ = ["FakeHub"]
