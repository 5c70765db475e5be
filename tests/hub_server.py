"""A local, in-memory stand-in for the Hugging Face Hub HTTP API, driven by the real client.

``HubServer`` speaks enough of the Hub protocol for an unmodified ``huggingface_hub`` 2.x
(``HfApi``, ``hf_hub_download``, ``snapshot_download``, and therefore ``transformers`` /
``peft`` ``from_pretrained`` / ``push_to_hub``) to create repos, push commits with regular and
LFS files, and download them again. It is stdlib only (``http.server`` in a background thread;
``yaml`` is imported lazily to validate model cards) and never talks to anything but loopback.

Usage::

    with HubServer(tokens={"hf_test_token": "alice"}) as hub:
        # HF_ENDPOINT=hub.url and HF_HUB_DISABLE_XET=1 must be set *before* huggingface_hub is
        # imported (it reads both at import time); tests/conftest.py does that.
        HfApi(token="hf_test_token").create_repo("alice/demo")
        hub.repo_files("alice/demo")  # {".gitattributes": b"...", ...}

Protocol pieces (matched against the installed client's source, huggingface_hub 2.4):

* ``GET /api/whoami-v2`` (``hf_api.py: HfApi._inner_whoami``).
* ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``PUT /api/{type}s/{id}/settings``
  (``hf_api.py: create_repo / delete_repo / update_repo_settings``). A 409 body carries ``url``
  because ``create_repo(exist_ok=True)`` reads it. New repos get an ``initial commit`` holding the
  Hub's default ``.gitattributes``, like the real Hub.
* ``GET /api/{type}s/{id}[/revision/{rev}]`` (``model_info`` / ``repo_info``; ``?blobs=true``
  adds size / blobId / lfs to ``siblings``), ``GET .../tree/{rev}[/{path}]`` (``list_repo_tree``,
  ``list_repo_files``), ``GET .../commits/{rev}``, ``GET .../refs``,
  ``POST .../paths-info/{rev}`` (form-encoded), ``POST|DELETE .../branch/{name}``.
* ``POST .../preupload/{rev}`` (``_commit_api.py: _fetch_upload_modes``): answers ``uploadMode``
  (``lfs`` for files >= 10 MiB, files whose 512-byte sample holds a NUL byte, or paths matching
  the repo's ``.gitattributes`` LFS patterns / common image & audio extensions), ``shouldIgnore``
  (always ``False``) and ``oid`` of the file already at that path (sha256 for LFS, git blob sha1
  for regular files), which is how the client drops unchanged files from a commit.
* ``POST /{id}.git/info/lfs/objects/batch`` (``lfs.py: post_lfs_batch_info``, basic transfer):
  objects already stored get no ``actions`` (the client skips the PUT); others get an ``upload``
  href (``/__hub_server__/lfs/{ticket}``, a pre-signed-URL stand-in: the client PUTs to it without
  auth) and a ``verify`` href (``POST /{id}.git/info/lfs/objects/verify``). The PUT body is checked
  against the announced sha256 and size before it is stored (``lfs.py: _upload_single_part``).
* ``POST .../commit/{rev}`` (``_commit_api.py: _prepare_commit_payload / _send_commit``): NDJSON
  lines ``header`` (``summary``, ``description``, optional ``parentCommit`` -> 412 on mismatch),
  ``file`` (base64), ``lfsFile`` (must reference an uploaded object), ``deletedFile``,
  ``deletedFolder``. Commits are atomic: any error leaves the branch where it was.
* ``HEAD|GET /{id}/resolve/{rev}/{path}`` (``file_download.py: get_hf_file_metadata / http_get``):
  200 with ``X-Repo-Commit``, ``ETag`` (git blob sha1) and, for LFS files, ``X-Linked-Etag``
  (sha256) / ``X-Linked-Size``; ``Range`` requests get 206.
* ``POST /api/validate-yaml`` (``hf_api.py: HfApi._validate_yaml``): 400 with ``errors`` when
  the README front matter is unclosed, not YAML, or not a mapping; a warning when it is missing.
* Errors follow ``utils/_http.py: hf_raise_for_status``: JSON ``{"error": ...}`` plus
  ``X-Error-Message`` and, where the client maps it to an exception class, ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``). A token that is unknown or revoked
  gets 401 ``Invalid credentials in Authorization header`` on any request, as on the Hub.
* ``GET /api/agent-harnesses`` (``utils/_detect_agent.py``, fetched once per process to tag the
  user agent): answered with an empty registry and left out of ``request_log``.
* Xet is not spoken: ``/xet-*-token`` routes answer 501. With ``hf_xet`` installed the 2.x client
  uploads through Xet unconditionally unless ``HF_HUB_DISABLE_XET=1`` (``_commit_api.py:
  _upload_files``, ``hf_api.py: upload_folder``).

Limits: model and dataset repos only (no Spaces), branches but no tags, no pull requests
(``create_pr=True`` -> 400), no multipart LFS, no ``.gitignore`` handling, one page per listing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "DEFAULT_GITATTRIBUTES",
    "FAULT_KINDS",
    "LFS_SIZE_THRESHOLD",
    "CommitSummary",
    "Fault",
    "HubServer",
    "RequestRecord",
]

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
"""Files at least this big are uploaded through LFS (the Hub's limit for regular git files)."""

_DEFAULT_LFS_PATTERNS = (
    *("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib"),
    *("*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot"),
    *("*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors"),
    *("saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip"),
    *("*.zst", "*tfevents*"),
)
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in _DEFAULT_LFS_PATTERNS
)
"""The ``.gitattributes`` the Hub puts in every new model repo (its ``initial commit``)."""

_ALWAYS_LFS = (
    *("*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.bmp", "*.tiff"),
    *("*.wav", "*.mp3", "*.flac", "*.ogg", "*.mp4"),
)

FAULT_KINDS = ("drop_lfs_upload", "commit_500", "slow", "revoked_token", "drop_download")
"""Kinds accepted by :meth:`HubServer.inject` (see its docstring)."""

_AGENT_REGISTRY = "/api/agent-harnesses"  # fetched once per process by utils/_detect_agent.py
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_API_REPO_RE = re.compile(
    r"^/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
    r"(?:/(?P<action>[^/]+)(?:/(?P<rest>.*))?)?$"
)
_LFS_RE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)\.git"
    r"/info/lfs/objects/(?P<op>batch|verify)$"
)
_RESOLVE_RE = re.compile(
    r"^/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)"
    r"/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"
)
_UPLOAD_RE = re.compile(r"^/__hub_server__/lfs/(?P<ticket>[0-9a-f]{32})$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*$", re.S | re.M)


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered, logged just before the answer is sent. ``path`` is the
    raw URL path (still percent-encoded); ``status`` is 0 when the server cut the connection on
    purpose (a ``drop_*`` fault)."""

    method: str
    path: str
    status: int
    query: str = ""


@dataclass(frozen=True)
class CommitSummary:
    """A commit as seen by :meth:`HubServer.commits`: ``changed`` = added or modified paths."""

    id: str
    title: str
    message: str
    author: str
    changed: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass
class Fault:
    """A pending fault (see :meth:`HubServer.inject`). ``times=None`` means until cleared."""

    kind: str
    times: int | None = 1
    match: re.Pattern[str] | None = None
    seconds: float = 1.0
    fired: int = 0

    def _matches(self, method: str, path: str) -> bool:
        return self.match is None or self.match.search(f"{method} {path}") is not None


# --------------------------------------------------------------------------------------------
# Repository state
# --------------------------------------------------------------------------------------------


def _git_blob_sha1(data: bytes) -> str:
    """git's blob id, what the client's ``utils/sha.py: git_hash`` computes for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class _Blob:
    content: bytes
    lfs: bool
    sha256: str
    git_oid: str  # for LFS files: the blob id of the pointer file, as on the Hub
    pointer_size: int = 0

    @classmethod
    def make(cls, content: bytes, lfs: bool) -> _Blob:
        sha256 = hashlib.sha256(content).hexdigest()
        if not lfs:
            return cls(content, False, sha256, _git_blob_sha1(content))
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\n"
            f"size {len(content)}\n"
        ).encode()
        return cls(content, True, sha256, _git_blob_sha1(pointer), len(pointer))

    @property
    def oid(self) -> str:
        """The oid the preupload endpoint reports, i.e. what the client compares against."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Commit:
    id: str
    parents: tuple[str, ...]
    title: str
    message: str
    author: str
    date: datetime
    files: dict[str, _Blob]
    changed: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]

    def resolve(self, revision: str) -> _Commit:
        """A branch name, a full commit id or an unambiguous prefix (>= 7 hex) of one."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        rev = revision.lower()
        if rev in self.commits:
            return self.commits[rev]
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            found = [c for cid, c in self.commits.items() if cid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def history(self, commit: _Commit) -> Iterator[_Commit]:
        """First-parent history, newest first."""
        current: _Commit | None = commit
        while current is not None:
            yield current
            current = self.commits[current.parents[0]] if current.parents else None


class _HTTPError(Exception):
    """Turned into a Hub-shaped error response by the request handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class HubServer:
    """In-memory Hugging Face Hub on ``127.0.0.1``.

    Args:
        port: TCP port; 0 picks a free one. The socket is bound in the constructor, so
            :attr:`url` is known (and reserved) before :meth:`start`.
        tokens: ``{token: username}`` accepted as ``Authorization: Bearer <token>``.
        orgs: ``{org: usernames}``; members may write to the org's namespace.

    Access rules: writes need a token whose user owns the namespace (or is a member of the
    org) -> otherwise 401 (no token) / 403 (wrong user); private repos are invisible (404
    ``RepoNotFound``, 401 without token) to everybody else; an unknown or revoked token gets
    401 on every request.
    """

    def __init__(
        self,
        port: int = 0,
        tokens: Mapping[str, str] | None = None,
        orgs: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._host = "127.0.0.1"
        self._initial_tokens = dict(tokens or {})
        self._orgs = {org: frozenset(members) for org, members in (orgs or {}).items()}
        self._lock = threading.RLock()
        self._generation = 0
        self._tokens: dict[str, str] = {}
        self._revoked: set[str] = set()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._faults: list[Fault] = []
        self._counter = 0
        self.request_log: list[RequestRecord] = []
        """Every answered request, in order (reset by :meth:`reset`)."""
        self.errors: list[str] = []
        """Tracebacks of unexpected exceptions inside the server (bugs, not client errors)."""
        self.reset()
        self._httpd: _HTTPServer | None = _HTTPServer((self._host, port), self)
        self._port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The endpoint to put in ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self._host}:{self._port}"

    def start(self) -> HubServer:
        """Serve in a daemon thread (idempotent; rebinds the same port after :meth:`stop`)."""
        if self._thread is not None:
            return self
        if self._httpd is None:
            self._httpd = _HTTPServer((self._host, self._port), self)
        httpd = self._httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"HubServer:{self._port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open (keep-alive) connections and close the listening socket."""
        if self._httpd is None:
            return
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all repos, LFS objects, faults, log entries and token changes.

        Requests still in flight from before the reset (e.g. a ``slow`` fault) are not logged.
        """
        with self._lock:
            self._generation += 1
            self._tokens = dict(self._initial_tokens)
            self._revoked.clear()
            self._repos.clear()
            self._tickets.clear()
            self._faults.clear()
            self.request_log.clear()
            self.errors.clear()

    def assert_client_configured(self) -> None:
        """Raise if the imported ``huggingface_hub`` is not pointed at this server without Xet.

        Both settings are read by ``huggingface_hub.constants`` at import time, so they only
        take effect if the environment was set before the first import.
        """
        from huggingface_hub import constants

        if self.url != constants.ENDPOINT:
            raise RuntimeError(
                f"huggingface_hub.constants.ENDPOINT is {constants.ENDPOINT!r}, not {self.url!r}: "
                "huggingface_hub was imported before HF_ENDPOINT was set."
            )
        if not constants.HF_HUB_DISABLE_XET:
            raise RuntimeError("HF_HUB_DISABLE_XET must be set before huggingface_hub is imported")

    # ---- tokens -----------------------------------------------------------------------------

    def add_token(self, token: str, user: str) -> None:
        """Accept ``token`` for ``user`` from now on (un-revokes it if needed)."""
        with self._lock:
            self._tokens[token] = user
            self._revoked.discard(token)

    def revoke(self, token: str) -> None:
        """Reject ``token`` from now on (401 on every request carrying it)."""
        with self._lock:
            self._revoked.add(token)

    @property
    def tokens(self) -> dict[str, str]:
        """The currently accepted ``{token: user}``."""
        with self._lock:
            return {t: u for t, u in self._tokens.items() if t not in self._revoked}

    def user_for(self, token: str) -> str | None:
        """The user a token authenticates, or None if unknown or revoked."""
        with self._lock:
            return None if token in self._revoked else self._tokens.get(token)

    # ---- faults -----------------------------------------------------------------------------

    def inject(
        self,
        kind: str,
        times: int | None = 1,
        match: str | None = None,
        seconds: float = 1.0,
    ) -> Fault:
        """Make the next ``times`` matching requests misbehave (``None``: until cleared).

        ``match`` is a regex searched in ``"<METHOD> <raw path>"``, e.g. ``r"^PUT "`` or
        ``r"/resolve/"``. Kinds:

        * ``drop_lfs_upload``: on the LFS object PUT, read half the body and close the
          connection without answering; nothing is stored. Note the client retries that PUT
          itself (``http_backoff``: 6 attempts, 1+2+4+8+8 s apart), so ``times=1`` is
          invisible to the caller; use ``times=None`` (and fast retries) to make it fail.
        * ``commit_500``: answer the commit endpoint with HTTP 500; nothing is committed
          (the client does not retry commits).
        * ``slow``: sleep ``seconds`` before handling any matching request.
        * ``revoked_token``: revoke the bearer token of the matching request (which then gets
          401, as does every later request with that token).
        * ``drop_download``: on ``GET .../resolve/...``, send the headers and half the body, then
          close the connection (the client resumes with a ``Range`` request).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        fault = Fault(kind, times, re.compile(match) if match else None, seconds)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Drop all pending faults."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Faults that can still fire."""
        with self._lock:
            return list(self._faults)

    def _take_fault(self, kind: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault._matches(method, path):
                    fault.fired += 1
                    if fault.times is not None and fault.fired >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    # ---- inspection & seeding ---------------------------------------------------------------

    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the test hub") from None

    def _commit_at(self, repo_id: str, revision: str, repo_type: str) -> tuple[_Repo, _Commit]:
        repo = self._repo(repo_id, repo_type)
        try:
            return repo, repo.resolve(revision)
        except _HTTPError:
            raise KeyError(f"no revision {revision!r} in {repo_type} repo {repo_id!r}") from None

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        """Ids of the existing repos of that type."""
        with self._lock:
            return sorted(rid for (rtype, rid) in self._repos if rtype == repo_type)

    def repo_files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, bytes]:
        """``{path: content}`` at ``revision`` (raises ``KeyError`` for an unknown repo)."""
        with self._lock:
            _, commit = self._commit_at(repo_id, revision, repo_type)
            return {path: blob.content for path, blob in commit.files.items()}

    def lfs_paths(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """Paths stored through LFS at ``revision``."""
        with self._lock:
            _, commit = self._commit_at(repo_id, revision, repo_type)
            return {path for path, blob in commit.files.items() if blob.lfs}

    def lfs_objects(self, repo_id: str, repo_type: str = "model") -> set[str]:
        """sha256 of every LFS object uploaded to the repo (committed or not)."""
        with self._lock:
            return set(self._repo(repo_id, repo_type).lfs_objects)

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._repo(repo_id, repo_type).private

    def commits(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> list[CommitSummary]:
        """History of ``revision``, newest first (the last one is the ``initial commit``)."""
        with self._lock:
            repo, head = self._commit_at(repo_id, revision, repo_type)
            return [
                CommitSummary(c.id, c.title, c.message, c.author, c.changed, c.deleted)
                for c in repo.history(head)
            ]

    def requests(self, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Logged requests filtered by method and by a regex searched in the raw path."""
        with self._lock:
            return [
                r
                for r in self.request_log
                if (method is None or r.method == method)
                and (path is None or re.search(path, r.path) is not None)
            ]

    def lfs_uploads(self) -> list[RequestRecord]:
        """The LFS object PUTs received (including dropped ones, with status 0)."""
        return self.requests("PUT", r"^/__hub_server__/lfs/")

    def push(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        *,
        delete: Iterable[str] = (),
        message: str = "seed",
        revision: str = "main",
        private: bool = False,
        repo_type: str = "model",
    ) -> str:
        """Commit directly (no HTTP), creating the repo if needed; returns the commit id.

        For seeding download tests. LFS vs regular is decided like the preupload endpoint
        would; ``delete`` lists files to remove (``ValueError`` if one is missing).
        """
        with self._lock:
            key = (repo_type, repo_id)
            if key not in self._repos:
                self._create_repo(repo_type, repo_id, private, author=repo_id.split("/")[0])
            repo, head = self._commit_at(repo_id, revision, repo_type)
            if revision not in repo.branches:
                raise KeyError(f"{revision!r} is not a branch of {repo_type} repo {repo_id!r}")
            ops: list[tuple[str, str, _Blob | None]] = []
            for path, data in files.items():
                content = data.encode() if isinstance(data, str) else bytes(data)
                lfs = self._should_be_lfs(head, path, len(content), content[:512])
                if lfs:
                    repo.lfs_objects[hashlib.sha256(content).hexdigest()] = content
                ops.append(("add", path, _Blob.make(content, lfs)))
            ops.extend(("deleteFile", path, None) for path in delete)
            try:
                commit = self._apply_commit(repo, revision, ops, message, "", repo.namespace, None)
            except _HTTPError as err:
                raise ValueError(err.message) from None
            return commit.id

    # ---- internals: state changes -----------------------------------------------------------

    def _new_id(self, *parts: object) -> str:
        self._counter += 1
        payload = json.dumps([self._counter, time.time(), *map(str, parts)]).encode()
        return hashlib.sha1(payload).hexdigest()

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_type, repo_id, private, _now())
        blob = _Blob.make(DEFAULT_GITATTRIBUTES.encode(), lfs=False)
        commit = _Commit(
            self._new_id(repo_id, "initial"),
            (),
            "initial commit",
            "",
            author,
            _now(),
            {".gitattributes": blob},
            (".gitattributes",),
            (),
        )
        repo.commits[commit.id] = commit
        repo.branches["main"] = commit.id
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _should_be_lfs(self, head: _Commit, path: str, size: int, sample: bytes) -> bool:
        """The Hub's rule: big, binary-looking, or matching an LFS pattern in .gitattributes."""
        if size >= LFS_SIZE_THRESHOLD or b"\0" in sample:
            return True
        attributes = head.files.get(".gitattributes")
        text = attributes.content.decode(errors="replace") if attributes else ""
        patterns = [
            line.split()[0]
            for line in text.splitlines()
            if line.strip() and not line.startswith("#") and "filter=lfs" in line.split()[1:]
        ]
        name = path.rsplit("/", 1)[-1]
        for pattern in (*patterns, *_ALWAYS_LFS):
            if "/" in pattern.strip("/"):
                if fnmatch(path, pattern.strip("/").replace("/**/", "/*")):
                    return True
            elif fnmatch(name, pattern.strip("/")):
                return True
        return False

    def _apply_commit(
        self,
        repo: _Repo,
        branch: str,
        ops: list[tuple[str, str, _Blob | None]],
        title: str,
        message: str,
        author: str,
        parent: str | None,
    ) -> _Commit:
        """Apply ``ops`` (add / deleteFile / deleteFolder) on top of ``branch``, atomically."""
        if branch not in repo.branches:
            raise _HTTPError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        if parent is not None and not head.id.startswith(parent.lower()):
            raise _HTTPError(
                412,
                "A commit has happened since. Please refresh and try again.",
                extra={"head": head.id},
            )
        files = dict(head.files)
        for kind, path, blob in ops:
            if kind == "add":
                assert blob is not None
                _check_path(path)
                files[path] = blob
            elif kind == "deleteFile":
                if files.pop(path, None) is None:
                    raise _HTTPError(
                        404, f"A file with this name doesn't exist: {path}", code="EntryNotFound"
                    )
            else:
                prefix = path.strip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise _HTTPError(
                        404,
                        f"A folder with this name doesn't exist: {path}",
                        code="EntryNotFound",
                    )
                for p in doomed:
                    del files[p]
        changed = tuple(sorted(p for p, b in files.items() if head.files.get(p) != b))
        deleted = tuple(sorted(set(head.files) - set(files)))
        commit = _Commit(
            self._new_id(repo.repo_id, head.id, title, changed, deleted),
            (head.id,),
            title,
            message,
            author,
            _now(),
            files,
            changed,
            deleted,
        )
        repo.commits[commit.id] = commit
        repo.branches[branch] = commit.id
        return commit

    # ---- internals: access control ----------------------------------------------------------

    def _can_write_namespace(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self._orgs.get(namespace, ()))

    def _get_repo(self, repo_type: str, repo_id: str, user: str | None, write: bool) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        visible = repo is not None and (
            not repo.private or self._can_write_namespace(user, repo.namespace)
        )
        if repo is None or not visible:
            raise _HTTPError(
                401 if user is None else 404, "Repository not found", code="RepoNotFound"
            )
        if write and user is None:
            raise _HTTPError(401, "You must be authenticated to write to a repository")
        if write and not self._can_write_namespace(user, repo.namespace):
            raise _HTTPError(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo

    def _log(self, generation: int, record: RequestRecord) -> None:
        with self._lock:
            if generation == self._generation:
                self.request_log.append(record)


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _HTTPError(400, f"Invalid path in repo: {path!r}")
    if parts[0] == ".git":
        raise _HTTPError(400, f"Cannot write under .git/: {path!r}")


def _front_matter(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata, error) of a model card; metadata None and no error when it has none."""
    if not text.lstrip("\ufeff").startswith("---"):
        return None, None
    found = _FRONT_MATTER_RE.match(text.lstrip("\ufeff"))
    if found is None:
        return None, "Invalid YAML front matter: no closing '---' line"
    import yaml

    try:
        data = yaml.safe_load(found.group(1))
    except yaml.YAMLError as err:
        return None, f"Invalid YAML in front matter: {err}"
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, "YAML front matter must be a mapping"
    for key in ("tags", "datasets", "language", "base_model"):
        value = data.get(key)
        if value is not None and not isinstance(value, (str, list)):
            return None, f'"{key}" must be a string or a list of strings'
    if data.get("license") is not None and not isinstance(data["license"], str):
        return None, '"license" must be a string'
    return data, None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut every open client connection (a stopped server must not keep answering)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Dropped connections are expected (faults, client timeouts); record anything else.
        err = traceback.format_exc()
        if not any(name in err for name in ("BrokenPipeError", "ConnectionResetError")):
            with self.hub._lock:
                self.hub.errors.append(err)


@dataclass
class _Response:
    """What a route produces; written to the socket after the state lock is released."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop_midway: bool = False  # drop_download fault: send half the body, then cut


def _json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> _Response:
    return _Response(status, json.dumps(obj).encode(), dict(headers or {}))


def _error_response(err: _HTTPError) -> _Response:
    oneline = " ".join(err.message.split())  # header values cannot hold newlines
    headers = {"X-Error-Message": oneline.encode("ascii", "replace").decode()[:500]}
    if err.code:
        headers["X-Error-Code"] = err.code
    headers.update(err.headers)
    return _json_response({"error": err.message, **err.extra}, err.status, headers)


def _flag(values: Mapping[str, list[str]], key: str) -> bool:
    return values.get(key, ["false"])[0].lower() in ("1", "true")


class _Handler(BaseHTTPRequestHandler):
    """One instance per connection; all state lives on ``self.server.hub``."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (see ``HubServer.request_log``)."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            self.close_connection = True

    # ---- plumbing ---------------------------------------------------------------------------

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _dispatch(self) -> None:
        hub = self.hub
        generation = hub._generation
        method = self.command
        split = urlsplit(self.path)
        path = split.path
        self._query = parse_qs(split.query)
        self._body = b""
        self._user: str | None = None

        def log(status: int) -> None:
            # Logged *before* the answer goes out, so a client that got its answer always finds
            # the request in the log.
            if path != _AGENT_REGISTRY:
                hub._log(generation, RequestRecord(method, path, status, split.query))

        try:
            slow = hub._take_fault("slow", method, path)
            if slow is not None:
                time.sleep(slow.seconds)
            if (
                method == "PUT"
                and _UPLOAD_RE.match(path)
                and hub._take_fault("drop_lfs_upload", method, path) is not None
            ):
                log(0)
                self._drop(int(self.headers.get("Content-Length") or 0) // 2)
                return
            try:
                self._body = self._read_body()
                self._user = self._authenticate(method, path)
                response = self._route(method, path)
            except _HTTPError as err:
                response = _error_response(err)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception:
                with hub._lock:
                    hub.errors.append(traceback.format_exc())
                response = _error_response(_HTTPError(500, "hub_server bug (see server.errors)"))
            log(0 if response.drop_midway and method == "GET" else response.status)
            self._write(response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    line = self.rfile.readline()
                    while line not in (b"\r\n", b"\n", b""):  # trailers
                        line = self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self, read_bytes: int) -> None:
        """Read part of the request body, then cut the connection without a response."""
        if read_bytes:
            self.rfile.read(read_bytes)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            self.close_connection = True

    def _write(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.drop_midway:
            self.wfile.write(response.body[: len(response.body) // 2])
            self._drop(0)
            return
        self.wfile.write(response.body)

    def _authenticate(self, method: str, path: str) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header[7:].strip() if header.lower().startswith("bearer ") else header
        if self.hub._take_fault("revoked_token", method, path) is not None:
            self.hub.revoke(token)
        user = self.hub.user_for(token)
        if user is None:
            raise _HTTPError(401, _INVALID_CREDENTIALS)
        return user

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body or b"{}")
        except ValueError:
            raise _HTTPError(400, "Request body is not valid JSON") from None

    def _require_user(self) -> str:
        if self._user is None:
            raise _HTTPError(401, "You must be authenticated to do this")
        return self._user

    # ---- routing ----------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> _Response:
        found = _UPLOAD_RE.match(path)
        if found and method == "PUT":
            return self._lfs_put(found["ticket"])  # hashes outside the lock
        with self.hub._lock:
            if path == "/api/whoami-v2" and method == "GET":
                return self._whoami()
            if path == _AGENT_REGISTRY and method == "GET":
                return _json_response({"standardEnvVars": [], "harnesses": {}})
            if path == "/api/repos/create" and method == "POST":
                return self._create_repo()
            if path == "/api/repos/delete" and method == "DELETE":
                return self._delete_repo()
            if path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml()
            found = _API_REPO_RE.match(path)
            if found:
                return self._api_repo(method, found)
            found = _LFS_RE.match(path)
            if found and method == "POST":
                repo = self._repo_from(found, write=True)
                return self._lfs_batch(repo) if found["op"] == "batch" else self._lfs_verify(repo)
            found = _RESOLVE_RE.match(path)
            if found and method in ("GET", "HEAD"):
                return self._resolve(found)
        raise _HTTPError(404, f"hub_server does not implement {method} {path}")

    def _repo_from(self, found: re.Match[str], write: bool) -> _Repo:
        repo_type = _REPO_TYPES[found["type"]] if found["type"] else "model"
        if repo_type == "space":
            raise _HTTPError(400, "hub_server does not support Spaces")
        repo_id = f"{unquote(found['ns'])}/{unquote(found['name'])}"
        return self.hub._get_repo(repo_type, repo_id, self._user, write)

    def _api_repo(self, method: str, found: re.Match[str]) -> _Response:
        action, rest = found["action"], found["rest"]
        if action is not None and action.startswith("xet-"):
            raise _HTTPError(
                501,
                "hub_server speaks plain LFS only: set HF_HUB_DISABLE_XET=1 before "
                "importing huggingface_hub",
            )
        if action == "branch" and method in ("POST", "DELETE"):
            return self._branch(method, self._repo_from(found, write=True), unquote(rest or ""))
        repo = self._repo_from(found, write=action in ("preupload", "commit", "settings"))
        raw_rev, _, sub = (rest or "").partition("/")
        rev = unquote(raw_rev)
        if (action, method) == (None, "GET"):
            return self._repo_info(repo, "main")
        if (action, method) == ("revision", "GET"):
            return self._repo_info(repo, rev)
        if (action, method) == ("tree", "GET"):
            return self._tree(repo, rev, unquote(sub))
        if (action, method) == ("commits", "GET"):
            return self._list_commits(repo, rev)
        if (action, method) == ("refs", "GET"):
            return self._refs(repo)
        if (action, method) == ("paths-info", "POST"):
            return self._paths_info(repo, rev)
        if (action, method) == ("preupload", "POST"):
            return self._preupload(repo, rev)
        if (action, method) == ("commit", "POST"):
            return self._commit(repo, rev)
        if (action, method) == ("settings", "PUT"):
            return self._settings(repo)
        raise _HTTPError(404, f"hub_server does not implement {method} {self.path}")

    # ---- account & repo management ----------------------------------------------------------

    def _whoami(self) -> _Response:
        user = self._require_user()
        orgs = [
            {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
            for org, members in sorted(self.hub._orgs.items())
            if user in members
        ]
        return _json_response(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": orgs,
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "hub_server", "role": "write"},
                },
            }
        )

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.hub.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _create_repo(self) -> _Response:
        user = self._require_user()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise _HTTPError(400, f"hub_server does not support {repo_type} repos")
        name = str(payload.get("name") or "")
        namespace = str(payload.get("organization") or user)
        if not _NAME_RE.match(name) or not _NAME_RE.match(namespace):
            raise _HTTPError(400, f"Invalid repo name {namespace}/{name}")
        if not self.hub._can_write_namespace(user, namespace):
            raise _HTTPError(
                403,
                f"You don't have the rights to create a {repo_type} under the namespace "
                f'"{namespace}"',
            )
        repo_id = f"{namespace}/{name}"
        existing = self.hub._repos.get((repo_type, repo_id))
        if existing is not None:
            raise _HTTPError(
                409,
                f"You already created this {repo_type} repo",
                extra={"url": self._repo_url(existing)},
            )
        private = payload.get("visibility") == "private" or payload.get("private") is True
        repo = self.hub._create_repo(repo_type, repo_id, private, author=user)
        return _json_response(
            {"url": self._repo_url(repo), "name": repo_id, "id": uuid.uuid4().hex[:24]}
        )

    def _delete_repo(self) -> _Response:
        user = self._require_user()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        repo = self.hub._get_repo(repo_type, repo_id, user, write=True)
        del self.hub._repos[(repo.repo_type, repo.repo_id)]
        return _json_response({})

    def _settings(self, repo: _Repo) -> _Response:
        payload = self._json_body()
        if "private" in payload:
            repo.private = bool(payload["private"])
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        return _json_response({})

    def _branch(self, method: str, repo: _Repo, branch: str) -> _Response:
        if method == "DELETE":
            if branch not in repo.branches:
                raise _HTTPError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            if branch == "main":
                raise _HTTPError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return _json_response({})
        if not re.fullmatch(r"[\w.\-/]+", branch) or branch.startswith("refs/"):
            raise _HTTPError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.branches:
            raise _HTTPError(409, "Reference already exists")
        start = self._json_body().get("startingPoint") or "main"
        repo.branches[branch] = repo.resolve(start).id
        return _json_response({})

    # ---- read endpoints ---------------------------------------------------------------------

    @staticmethod
    def _file_entry(path: str, blob: _Blob) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": blob.git_oid,
            "size": len(blob.content),
            "path": path,
        }
        if blob.lfs:
            entry["lfs"] = {
                "oid": blob.sha256,
                "size": len(blob.content),
                "pointerSize": blob.pointer_size,
            }
        return entry

    @staticmethod
    def _dir_entry(commit: _Commit, path: str) -> dict[str, Any]:
        prefix = path + "/"
        listing = sorted((p, b.git_oid) for p, b in commit.files.items() if p.startswith(prefix))
        oid = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    @staticmethod
    def _with_last_commit(repo: _Repo, commit: _Commit, entry: dict[str, Any]) -> dict[str, Any]:
        path = entry["path"]

        def touched(c: _Commit) -> bool:
            return any(p == path or p.startswith(path + "/") for p in c.changed + c.deleted)

        last = next((c for c in repo.history(commit) if touched(c)), commit)
        summary = {"id": last.id, "title": last.title, "date": _iso(last.date)}
        return {**entry, "lastCommit": summary}

    def _repo_info(self, repo: _Repo, revision: str) -> _Response:
        commit = repo.resolve(revision)
        blobs = _flag(self._query, "blobs")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=len(blob.content), blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {
                        "size": len(blob.content),
                        "sha256": blob.sha256,
                        "pointerSize": blob.pointer_size,
                    }
            siblings.append(sibling)
        readme = commit.files.get("README.md")
        card = _front_matter(readme.content.decode(errors="replace"))[0] if readme else None
        tags = card.get("tags") if card else None
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.id,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [tags] if isinstance(tags, str) else list(tags or []),
            "siblings": siblings,
            "usedStorage": sum(len(b) for b in repo.lfs_objects.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if card is not None:
            info["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if key in card:
                    info[key] = card[key]
        return _json_response(info)

    def _tree(self, repo: _Repo, revision: str, path: str) -> _Response:
        commit = repo.resolve(revision)
        path = path.strip("/")
        prefix = path + "/" if path else ""
        below = [p for p in commit.files if p.startswith(prefix)]
        if path and not below:
            raise _HTTPError(
                404,
                f"{path} does not exist or is not a directory",
                code="EntryNotFound",
                headers={"X-Repo-Commit": commit.id},
            )
        recursive = _flag(self._query, "recursive")
        files: list[str] = []
        dirs: set[str] = set()
        for p in below:
            parts = p[len(prefix) :].split("/")
            if recursive:
                files.append(p)
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            elif len(parts) == 1:
                files.append(p)
            else:
                dirs.add(prefix + parts[0])
        entries = [self._dir_entry(commit, d) for d in sorted(dirs)]
        entries += [self._file_entry(p, commit.files[p]) for p in sorted(files)]
        if _flag(self._query, "expand"):
            entries = [self._with_last_commit(repo, commit, e) for e in entries]
        return _json_response(entries)

    def _list_commits(self, repo: _Repo, revision: str) -> _Response:
        return _json_response(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author, "avatar": None}],
                    "date": _iso(c.date),
                }
                for c in repo.history(repo.resolve(revision))
            ]
        )

    @staticmethod
    def _refs(repo: _Repo) -> _Response:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": cid}
            for name, cid in sorted(repo.branches.items())
        ]
        return _json_response(
            {"branches": branches, "converts": [], "tags": [], "pullRequests": []}
        )

    def _paths_info(self, repo: _Repo, revision: str) -> _Response:
        commit = repo.resolve(revision)
        form = parse_qs(self._body.decode())
        entries = []
        for raw in form.get("paths", []):
            path = raw.strip("/")
            if path in commit.files:
                entries.append(self._file_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                entries.append(self._dir_entry(commit, path))
        if _flag(form, "expand"):
            entries = [self._with_last_commit(repo, commit, e) for e in entries]
        return _json_response(entries)

    def _resolve(self, found: re.Match[str]) -> _Response:
        repo = self._repo_from(found, write=False)
        commit = repo.resolve(unquote(found["rev"]))
        path = unquote(found["file"])
        blob = commit.files.get(path)
        if blob is None:
            raise _HTTPError(
                404,
                "Entry not found",
                code="EntryNotFound",
                headers={"X-Repo-Commit": commit.id},
            )
        size = len(blob.content)
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{blob.git_oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(size)
        start, end, status = 0, size, 200
        wanted = self.headers.get("Range")
        if wanted and self.command == "GET":
            span = _RANGE_RE.match(wanted.strip())
            if span is None or not (span[1] or span[2]):
                raise _HTTPError(416, f"Invalid range {wanted!r}")
            if span[1]:
                start = int(span[1])
                end = min(size, int(span[2]) + 1) if span[2] else size
            else:
                start = max(0, size - int(span[2]))
            if start >= end:
                raise _HTTPError(
                    416,
                    f"Range {wanted!r} not satisfiable",
                    headers={"Content-Range": f"bytes */{size}"},
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        content_type = "application/octet-stream" if blob.lfs else "text/plain; charset=utf-8"
        drop = self.command == "GET" and (
            self.hub._take_fault("drop_download", "GET", urlsplit(self.path).path) is not None
        )
        return _Response(status, blob.content[start:end], headers, content_type, drop)

    def _validate_yaml(self) -> _Response:
        payload = self._json_body()
        card, error = _front_matter(str(payload.get("content", "")))
        if error is not None:
            raise _HTTPError(400, error, extra={"errors": [{"message": error}], "warnings": []})
        warnings = [] if card else [{"message": "empty or missing yaml metadata in repo card"}]
        return _json_response({"errors": [], "warnings": warnings})

    # ---- upload endpoints -------------------------------------------------------------------

    def _preupload(self, repo: _Repo, revision: str) -> _Response:
        if self._query.get("create_pr"):
            raise _HTTPError(400, "hub_server does not support pull requests (create_pr)")
        head = repo.resolve(revision)
        answers = []
        for item in self._json_body().get("files", []):
            path = str(item["path"])
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self.hub._should_be_lfs(head, path, int(item.get("size", 0)), sample)
            answer: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
            }
            existing = head.files.get(path)
            if existing is not None:
                answer["oid"] = existing.oid
            answers.append(answer)
        return _json_response({"files": answers, "commitOid": head.id})

    def _lfs_batch(self, repo: _Repo) -> _Response:
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise _HTTPError(400, "hub_server only implements the LFS upload operation")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise _HTTPError(400, "hub_server only implements the basic LFS transfer")
        verify = f"{self._repo_url(repo)}.git/info/lfs/objects/verify"
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _SHA256_RE.match(oid) or not isinstance(size, int):
                objects.append(
                    {
                        "oid": str(oid),
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
                continue
            stored = repo.lfs_objects.get(oid)
            if stored is not None and len(stored) == size:
                objects.append({"oid": oid, "size": size, "authenticated": True})
                continue
            ticket = uuid.uuid4().hex
            self.hub._tickets[ticket] = ((repo.repo_type, repo.repo_id), oid, size)
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self.hub.url}/__hub_server__/lfs/{ticket}"},
                        "verify": {"href": verify},
                    },
                }
            )
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        return _Response(200, body.encode(), content_type="application/vnd.git-lfs+json")

    def _lfs_verify(self, repo: _Repo) -> _Response:
        payload = self._json_body()
        stored = repo.lfs_objects.get(str(payload.get("oid")))
        if stored is None or len(stored) != payload.get("size"):
            raise _HTTPError(404, f"LFS object {payload.get('oid')} not found")
        return _json_response({"success": True})

    def _lfs_put(self, ticket: str) -> _Response:
        hub = self.hub
        with hub._lock:
            target = hub._tickets.get(ticket)
        if target is None:
            raise _HTTPError(404, "Unknown or expired upload URL")
        key, oid, size = target
        data = self._body
        if len(data) != size:
            raise _HTTPError(400, f"Size mismatch: announced {size}, received {len(data)}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HTTPError(400, "sha256 mismatch: the uploaded content does not match its oid")
        with hub._lock:
            repo = hub._repos.get(key)
            if repo is None:
                raise _HTTPError(404, "The repository of this upload URL is gone")
            repo.lfs_objects[oid] = data
        return _Response(200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _commit(self, repo: _Repo, revision: str) -> _Response:
        if self._query.get("create_pr"):
            raise _HTTPError(400, "hub_server does not support pull requests (create_pr)")
        if self.hub._take_fault("commit_500", self.command, urlsplit(self.path).path):
            raise _HTTPError(500, "Internal Error - injected commit_500 fault")
        try:
            items = [json.loads(line) for line in self._body.splitlines() if line.strip()]
        except ValueError:
            raise _HTTPError(400, "Commit body is not valid NDJSON") from None
        if not items or items[0].get("key") != "header":
            raise _HTTPError(400, "The first NDJSON line must be the commit header")
        header = items[0].get("value") or {}
        title = str(header.get("summary") or "").strip()
        if not title:
            raise _HTTPError(400, "Commit summary is required")
        ops: list[tuple[str, str, _Blob | None]] = []
        for item in items[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = str(value.get("path", ""))
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HTTPError(400, f"Unsupported encoding for {path}")
                content = base64.b64decode(value.get("content") or "")
                if len(content) >= LFS_SIZE_THRESHOLD or b"\0" in content[:8000]:
                    raise _HTTPError(
                        400,
                        f"Your push was rejected because {path} is a large or binary file "
                        "that must be stored with LFS",
                    )
                ops.append(("add", path, _Blob.make(content, lfs=False)))
            elif key == "lfsFile":
                data = repo.lfs_objects.get(str(value.get("oid")))
                if data is None:
                    raise _HTTPError(
                        400,
                        "Your push was rejected because an LFS pointer pointed to a file "
                        f"that does not exist ({path})",
                    )
                if value.get("size") is not None and value["size"] != len(data):
                    raise _HTTPError(400, f"LFS size mismatch for {path}")
                ops.append(("add", path, _Blob.make(data, lfs=True)))
            elif key == "deletedFile":
                ops.append(("deleteFile", path, None))
            elif key == "deletedFolder":
                ops.append(("deleteFolder", path, None))
            else:
                raise _HTTPError(400, f"Unknown commit operation {key!r}")
        commit = self.hub._apply_commit(
            repo,
            revision,
            ops,
            title,
            str(header.get("description") or ""),
            self._require_user(),
            header.get("parentCommit"),
        )
        return _json_response(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.id}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )
