"""The local Hub (``hub_server.py``) driven by the real, unmocked ``huggingface_hub`` client.

Every test goes through ``HfApi`` / ``hf_hub_download`` / ``snapshot_download`` over HTTP to
the server at ``HF_ENDPOINT`` (set by conftest.py before huggingface_hub is imported), then
checks the server's own view of the repo (``hub.repo_files``, ``hub.commits``,
``hub.request_log``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session

from hub_server import LFS_SIZE_THRESHOLD, HubServer
from procs import run_process

ALICE = "hf_test_token"  # conftest: user "alice"
BOB = "hf_other_token"  # conftest: user "bob"

CONFIG = b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8}\n'
WEIGHTS = b"\x00\x01safetensors-ish\x00" * 4096  # ~80 kB, NUL bytes and .safetensors => LFS


def _status(err: pytest.ExceptionInfo[HfHubHTTPError]) -> int:
    return err.value.response.status_code


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _repo_with_files(hub: HubServer, tmp_path: Path, repo_id: str = "alice/adapter") -> HfApi:
    api = HfApi(token=ALICE)
    api.create_repo(repo_id)
    folder = _folder(tmp_path / "push", {"adapter_config.json": CONFIG, "w.safetensors": WEIGHTS})
    api.upload_folder(folder_path=folder, repo_id=repo_id)
    return api


def test_client_is_configured_for_the_local_hub(hub: HubServer) -> None:
    from huggingface_hub import constants

    assert constants.ENDPOINT == hub.url == os.environ["HF_ENDPOINT"]
    assert hub.url.startswith("http://127.0.0.1:")
    assert constants.HF_HUB_DISABLE_XET
    assert not constants.HF_HUB_OFFLINE
    assert Path(constants.HF_HOME).resolve() != (Path.home() / ".cache" / "huggingface").resolve()
    assert huggingface_hub.get_token() is None  # no stored or env token leaks into the tests


def test_standalone_server_stops_answering(hub: HubServer) -> None:
    with HubServer(tokens={"hf_x": "carol"}) as other:
        assert other.url != hub.url
        assert HfApi(endpoint=other.url, token="hf_x").whoami()["name"] == "carol"
    with pytest.raises(httpx2.TransportError):  # also on the client's pooled connection
        HfApi(endpoint=other.url, token="hf_x").whoami()
    assert HfApi(token=ALICE).whoami()["name"] == "alice"


def test_whoami_and_rejected_tokens(hub: HubServer) -> None:
    assert HfApi(token=ALICE).whoami()["name"] == "alice"
    assert HfApi(token=BOB).whoami()["name"] == "bob"

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_token").whoami()
    assert _status(err) == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_token").create_repo("alice/x")
    assert _status(err) == 401
    assert not isinstance(err.value, RepositoryNotFoundError)

    hub.revoke(BOB)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=BOB).whoami()
    assert _status(err) == 401
    assert hub.repo_ids() == []


def test_create_repo_conflicts_and_permissions(hub: HubServer) -> None:
    api = HfApi(token=ALICE)
    url = api.create_repo("alice/demo")
    assert url.repo_id == "alice/demo" and url == f"{hub.url}/alice/demo"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/demo")
    assert _status(err) == 409
    assert api.create_repo("alice/demo", exist_ok=True) == url
    # New repos hold the Hub's default .gitattributes, committed as "initial commit".
    assert api.list_repo_files("alice/demo") == [".gitattributes"]
    assert [c.title for c in hub.commits("alice/demo")] == ["initial commit"]
    assert not api.model_info("alice/demo").private

    api.delete_repo("alice/demo")
    assert hub.repo_ids() == []
    with pytest.raises(KeyError):
        hub.repo_files("alice/demo")
    api.create_repo("alice/demo")

    bob = HfApi(token=BOB)
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_repo("alice/bobs")
    assert _status(err) == 403
    with pytest.raises(HfHubHTTPError) as err:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/demo")
    assert _status(err) == 403
    assert hub.repo_files("alice/demo").keys() == {".gitattributes"}


def test_upload_folder_regular_and_lfs_then_download(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=ALICE)
    api.create_repo("alice/adapter")
    big_text = b"0123456789abcdef\n" * (LFS_SIZE_THRESHOLD // 17 + 1000)  # text, but > 10 MiB
    files = {
        "adapter_config.json": CONFIG,
        "w.safetensors": WEIGHTS,
        "big.txt": big_text,
        "docs/notes.md": b"# notes\n",
    }
    info = api.upload_folder(folder_path=_folder(tmp_path / "push", files), repo_id="alice/adapter")

    assert hub.repo_files("alice/adapter") == {
        ".gitattributes": hub.repo_files("alice/adapter")[".gitattributes"],
        **files,
    }
    assert hub.lfs_paths("alice/adapter") == {"w.safetensors", "big.txt"}
    assert [r.status for r in hub.lfs_uploads()] == [200, 200]
    assert hub.commits("alice/adapter")[0].id == info.oid
    assert set(hub.commits("alice/adapter")[0].changed) == set(files)

    assert sorted(api.list_repo_files("alice/adapter")) == sorted([".gitattributes", *files])
    meta = {s.rfilename: s for s in api.model_info("alice/adapter", files_metadata=True).siblings}
    assert meta["w.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert meta["big.txt"].lfs.size == len(big_text)
    assert meta["adapter_config.json"].lfs is None
    assert meta["adapter_config.json"].size == len(CONFIG)
    assert api.file_exists("alice/adapter", "docs/notes.md")
    assert not api.file_exists("alice/adapter", "nope.bin")
    assert [c.commit_id for c in api.list_repo_commits("alice/adapter")] == [
        c.id for c in hub.commits("alice/adapter")
    ]

    infos = api.get_paths_info("alice/adapter", ["docs", "w.safetensors", "missing"])
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFolder", "docs"),
        ("RepoFile", "w.safetensors"),
    ]
    tree = {e.path: e for e in api.list_repo_tree("alice/adapter", expand=True)}
    assert set(tree) == {
        ".gitattributes",
        "adapter_config.json",
        "w.safetensors",
        "big.txt",
        "docs",
    }
    assert tree["docs"].last_commit.oid == info.oid
    assert tree[".gitattributes"].last_commit.title == "initial commit"

    cache = tmp_path / "cache"
    for name, data in files.items():
        assert Path(hf_hub_download("alice/adapter", name, cache_dir=cache)).read_bytes() == data
    snapshot = Path(snapshot_download("alice/adapter", cache_dir=tmp_path / "cache2"))
    assert snapshot.name == info.oid
    assert {name: (snapshot / name).read_bytes() for name in files} == files


def test_reuploading_identical_content_sends_no_lfs_object(hub: HubServer, tmp_path: Path) -> None:
    api = _repo_with_files(hub, tmp_path)
    assert len(hub.lfs_uploads()) == 1
    head = hub.commits("alice/adapter")[0].id
    hub.request_log.clear()

    same = _folder(tmp_path / "same", {"adapter_config.json": CONFIG, "w.safetensors": WEIGHTS})
    info = api.upload_folder(folder_path=same, repo_id="alice/adapter")
    assert info.oid == head  # the client saw identical oids in preupload: no commit at all
    assert hub.lfs_uploads() == []
    assert hub.requests("POST", r"/commit/") == []

    changed = _folder(
        tmp_path / "changed", {"adapter_config.json": b"{}", "w.safetensors": WEIGHTS}
    )
    info = api.upload_folder(folder_path=changed, repo_id="alice/adapter")
    assert hub.commits("alice/adapter")[0].changed == ("adapter_config.json",)
    assert hub.lfs_uploads() == []  # the LFS batch answered "already stored"
    assert len(hub.requests("POST", r"\.git/info/lfs/objects/batch$")) == 2


def test_missing_repo_revision_and_file(hub: HubServer, tmp_path: Path) -> None:
    api = _repo_with_files(hub, tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/nothing", "adapter_config.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/nothing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/adapter", "adapter_config.json", revision="v9", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("alice/adapter", revision="v9")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/adapter", "missing.json", cache_dir=cache)
    # A commit id (or an unambiguous prefix of it) is a valid revision.
    head = hub.commits("alice/adapter")[0].id
    path = hf_hub_download(
        "alice/adapter", "adapter_config.json", revision=head[:10], cache_dir=cache
    )
    assert Path(path).read_bytes() == CONFIG


def test_private_repo_needs_the_owners_token(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=ALICE)
    api.create_repo("alice/secret", private=True)
    api.upload_file(
        path_or_fileobj=CONFIG, path_in_repo="adapter_config.json", repo_id="alice/secret"
    )
    assert hub.is_private("alice/secret") and api.model_info("alice/secret").private

    for token in (False, BOB):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(
                "alice/secret", "adapter_config.json", token=token, cache_dir=tmp_path / "anon"
            )
    path = hf_hub_download(
        "alice/secret", "adapter_config.json", token=ALICE, cache_dir=tmp_path / "owner"
    )
    assert Path(path).read_bytes() == CONFIG

    api.update_repo_settings("alice/secret", private=False)
    assert HfApi(token=False).model_info("alice/secret").private is False


def test_commits_are_atomic(hub: HubServer, tmp_path: Path) -> None:
    api = _repo_with_files(hub, tmp_path)
    before = hub.repo_files("alice/adapter")
    initial = hub.commits("alice/adapter")[-1].id

    with pytest.raises(HfHubHTTPError) as err:  # stale parentCommit
        api.create_commit(
            "alice/adapter",
            commit_message="stale",
            parent_commit=initial,
            operations=[CommitOperationAdd("new.txt", b"new")],
        )
    assert _status(err) == 412
    with pytest.raises(EntryNotFoundError):  # one bad operation sinks the whole commit
        api.create_commit(
            "alice/adapter",
            commit_message="half",
            operations=[
                CommitOperationAdd("new.txt", b"new"),
                CommitOperationDelete("not-there.txt"),
            ],
        )
    assert hub.repo_files("alice/adapter") == before
    assert len(hub.commits("alice/adapter")) == 2

    head = hub.commits("alice/adapter")[0].id
    api.create_commit(
        "alice/adapter",
        commit_message="ok",
        parent_commit=head,
        operations=[
            CommitOperationAdd("new.txt", b"new"),
            CommitOperationDelete("w.safetensors"),
        ],
    )
    assert hub.repo_files("alice/adapter").keys() == {
        ".gitattributes",
        "adapter_config.json",
        "new.txt",
    }
    assert hub.commits("alice/adapter")[0].deleted == ("w.safetensors",)


def test_model_card_front_matter_is_validated(hub: HubServer) -> None:
    api = HfApi(token=ALICE)
    api.create_repo("alice/card")
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md"):
        api.upload_file(
            path_or_fileobj=b"---\ntags: [a, b\n---\n# card\n",
            path_in_repo="README.md",
            repo_id="alice/card",
        )
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md"):
        api.upload_file(
            path_or_fileobj=b"---\nlicense: apache-2.0\n# no closing line\n",
            path_in_repo="README.md",
            repo_id="alice/card",
        )
    assert "README.md" not in hub.repo_files("alice/card")

    card = b"---\nlicense: apache-2.0\nlibrary_name: peft\ntags:\n- prompt-tuning\n---\n# Card\n"
    api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="alice/card")
    info = api.model_info("alice/card")
    assert info.card_data.license == "apache-2.0"
    assert info.tags == ["prompt-tuning"] and info.library_name == "peft"


def test_branches(hub: HubServer, tmp_path: Path) -> None:
    api = _repo_with_files(hub, tmp_path)
    api.create_branch("alice/adapter", branch="dev")
    api.upload_file(
        path_or_fileobj=b"{}",
        path_in_repo="adapter_config.json",
        repo_id="alice/adapter",
        revision="dev",
    )
    assert hub.repo_files("alice/adapter")["adapter_config.json"] == CONFIG
    assert hub.repo_files("alice/adapter", revision="dev")["adapter_config.json"] == b"{}"
    path = hf_hub_download(
        "alice/adapter", "adapter_config.json", revision="dev", cache_dir=tmp_path / "cache"
    )
    assert Path(path).read_bytes() == b"{}"
    assert {b.name for b in api.list_repo_refs("alice/adapter").branches} == {"main", "dev"}


def test_dataset_repos(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=ALICE)
    url = api.create_repo("alice/evals", repo_type="dataset")
    assert url.repo_type == "dataset"
    api.upload_file(
        path_or_fileobj=WEIGHTS, path_in_repo="data.npy", repo_id="alice/evals", repo_type="dataset"
    )
    assert hub.lfs_paths("alice/evals", repo_type="dataset") == {"data.npy"}
    path = hf_hub_download(
        "alice/evals", "data.npy", repo_type="dataset", cache_dir=tmp_path / "cache"
    )
    assert Path(path).read_bytes() == WEIGHTS
    assert hub.repo_ids() == [] and hub.repo_ids("dataset") == ["alice/evals"]


# ---- fault injection ------------------------------------------------------------------------


def test_dropped_lfs_upload_fails_after_client_retries(
    hub: HubServer, tmp_path: Path, fast_retries
) -> None:
    api = HfApi(token=ALICE)
    api.create_repo("alice/adapter")
    before = hub.repo_files("alice/adapter")
    folder = _folder(tmp_path / "push", {"adapter_config.json": CONFIG, "w.safetensors": WEIGHTS})

    hub.inject("drop_lfs_upload", times=None)
    with pytest.raises(RuntimeError, match=r"Error while uploading 'w\.safetensors'"):
        api.upload_folder(folder_path=folder, repo_id="alice/adapter")
    assert [r.status for r in hub.lfs_uploads()] == [0] * fast_retries.max_attempts
    assert hub.repo_files("alice/adapter") == before
    assert hub.lfs_objects("alice/adapter") == set()

    hub.clear_faults()
    api.upload_folder(folder_path=folder, repo_id="alice/adapter")
    assert hub.repo_files("alice/adapter")["w.safetensors"] == WEIGHTS


def test_single_dropped_lfs_upload_is_retried_by_the_client(
    hub: HubServer, tmp_path: Path, fast_retries
) -> None:
    hub.inject("drop_lfs_upload", times=1)
    _repo_with_files(hub, tmp_path)
    assert [r.status for r in hub.lfs_uploads()] == [0, 200]
    assert hub.repo_files("alice/adapter")["w.safetensors"] == WEIGHTS
    assert hub.faults == []


def test_commit_500_commits_nothing(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=ALICE)
    api.create_repo("alice/adapter")
    before = hub.repo_files("alice/adapter")
    folder = _folder(tmp_path / "push", {"adapter_config.json": CONFIG, "w.safetensors": WEIGHTS})

    hub.inject("commit_500")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(folder_path=folder, repo_id="alice/adapter")
    assert _status(err) == 500
    assert hub.repo_files("alice/adapter") == before
    assert len(hub.commits("alice/adapter")) == 1

    api.upload_folder(folder_path=folder, repo_id="alice/adapter")
    assert hub.repo_files("alice/adapter")["adapter_config.json"] == CONFIG
    assert len(hub.lfs_uploads()) == 1  # the object stored before the 500 was reused


def test_token_revoked_mid_push(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=ALICE)
    api.create_repo("alice/adapter")
    before = hub.repo_files("alice/adapter")
    folder = _folder(tmp_path / "push", {"adapter_config.json": CONFIG, "w.safetensors": WEIGHTS})

    hub.inject("revoked_token", match=r"^POST .*/commit/")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(folder_path=folder, repo_id="alice/adapter")
    assert _status(err) == 401
    assert hub.repo_files("alice/adapter") == before
    with pytest.raises(HfHubHTTPError):  # revoked for good
        api.upload_folder(folder_path=folder, repo_id="alice/adapter")

    hub.add_token("hf_fresh_token", "alice")
    HfApi(token="hf_fresh_token").upload_folder(folder_path=folder, repo_id="alice/adapter")
    assert hub.repo_files("alice/adapter")["w.safetensors"] == WEIGHTS


def test_slow_hub_times_out_then_recovers(hub: HubServer, tmp_path: Path) -> None:
    api = _repo_with_files(hub, tmp_path)
    before = hub.repo_files("alice/adapter")
    hub.inject("slow", seconds=1.0, match=r"^GET /api/models/alice/adapter$")
    with pytest.raises(httpx2.TimeoutException):  # model_info does not retry
        api.model_info("alice/adapter", timeout=0.2)
    assert api.model_info("alice/adapter", timeout=0.2).sha == hub.commits("alice/adapter")[0].id

    # hf_hub_download retries a failed HEAD itself (60 s timeout) when nothing is cached, so
    # one slow answer costs time but no error.
    hub.inject("slow", seconds=0.5, match=r"^HEAD /alice/adapter/resolve/")
    path = hf_hub_download(
        "alice/adapter", "adapter_config.json", etag_timeout=0.1, cache_dir=tmp_path / "cache"
    )
    assert Path(path).read_bytes() == CONFIG
    assert hub.faults == []
    assert hub.repo_files("alice/adapter") == before


def test_dropped_download_is_retried(hub: HubServer, tmp_path: Path, fast_retries) -> None:
    _repo_with_files(hub, tmp_path)
    hub.inject("drop_download", match=r"/w\.safetensors$")
    path = hf_hub_download("alice/adapter", "w.safetensors", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == WEIGHTS
    # The client buffers 10 MB chunks, so after losing half of an 80 kB body it restarts at 0.
    assert [r.status for r in hub.requests("GET", r"/resolve/")] == [0, 200]


def test_range_requests(hub: HubServer, tmp_path: Path) -> None:
    _repo_with_files(hub, tmp_path)
    url = hf_hub_url("alice/adapter", "w.safetensors")
    session = get_session()
    part = session.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == WEIGHTS[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
    assert session.get(url, headers={"Range": "bytes=-5"}).content == WEIGHTS[-5:]
    assert session.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416


def test_inject_rejects_unknown_kinds(hub: HubServer) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        hub.inject("drop_everything")
    hub.inject("slow", times=2)
    hub.clear_faults()
    assert hub.faults == []


# ---- other processes ------------------------------------------------------------------------


def test_fresh_process_downloads_from_the_local_hub(hub: HubServer, tmp_path: Path) -> None:
    HfApi(token=ALICE).create_repo("alice/secret", private=True)
    hub.push("alice/secret", {"w.safetensors": WEIGHTS, "adapter_config.json": CONFIG})
    code = (
        "import hashlib, json, sys\n"
        "from huggingface_hub import constants, hf_hub_download\n"
        "path = hf_hub_download('alice/secret', 'w.safetensors', cache_dir=sys.argv[1])\n"
        "data = open(path, 'rb').read()\n"
        "print(json.dumps([constants.ENDPOINT, hashlib.sha256(data).hexdigest()]))\n"
    )
    env = {**os.environ, "HF_TOKEN": ALICE}  # everything else (HF_ENDPOINT, ...) is inherited
    out = run_process(
        [sys.executable, "-c", code, str(tmp_path / "cache")], env=env, timeout=60, check=True
    )
    endpoint, digest = json.loads(out.stdout.strip().splitlines()[-1])
    assert endpoint == hub.url
    assert digest == hashlib.sha256(WEIGHTS).hexdigest()
    assert hub.requests("GET", r"^/alice/secret/resolve/")[-1].status == 200
