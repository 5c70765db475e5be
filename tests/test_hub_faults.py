"""Hub faults during ``push_to_hub`` / ``hf-tsprompt push``, injected by the local Hub server.

Faults (``tests/hub_server.py: HubServer.inject``): the connection dropped during every LFS
upload attempt, HTTP 500 on the commit, a slow commit (and a push killed while the server
sits on it), a token revoked mid-push, and a Hub that cannot be reached at all.

Guaranteed for each failing push:

* it raises one :class:`~hf_tsprompt.errors.HubError` (the CLI: exit 2, one paragraph, no
  traceback) that says what failed, that the repo is unchanged, and to retry;
* the remote repo is exactly as it was before: same files, same history (a repo the push
  itself created is deleted again; only a revoked token, which cannot delete it, leaves that
  new repo empty, holding nothing but the Hub's initial commit);
* no local file changes (paths, bytes and modification times of the whole run folder);
* the token appears in no error message, log record, or printed output;
* a retry of the same call (with a fresh token after a revocation) succeeds, in one commit.

Existing coverage elsewhere: a wrong/foreign token (``test_hub.py::
test_bad_token_is_a_clear_error_and_changes_nothing``), the raw client against each fault
(``test_hub_server.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hf_tsprompt.cli import EXIT_USER_ERROR, main
from hf_tsprompt.errors import HubError
from hf_tsprompt.hub import PUSHED_FILES, push_to_hub

from hub_server import HubServer
from procs import start_process
from tiny import make_tiny_run

REPO = "alice/faulty-push"
HUB_TOKEN = "hf_test_token"  # alice's write token on the local hub (tests/conftest.py)
FRESH_TOKEN = "hf_fresh_token_after_revocation"
SEED_FILES = {"README.md": "---\nlicense: mit\n---\nold card\n", "notes.txt": "keep me\n"}

LocalState = dict[str, tuple[str, int] | None]
RemoteState = tuple[dict[str, bytes], list[str]] | None


@pytest.fixture(scope="module")
def built_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, _, _ = make_tiny_run(tmp_path_factory.mktemp("faults"))
    return run_dir


@pytest.fixture
def run(built_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(built_run, copy)
    return copy


def _local(folder: Path) -> LocalState:
    """Every path under ``folder`` with its sha256 and mtime (None for folders)."""
    out: LocalState = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file():
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        else:
            out[rel] = None
    return out


def _remote(hub: HubServer, repo: str = REPO, revision: str = "main") -> RemoteState:
    """Files and commit ids of ``repo`` at ``revision`` (None: no such repo)."""
    if repo not in hub.repo_ids():
        return None
    return hub.repo_files(repo, revision), [c.id for c in hub.commits(repo, revision)]


def _expected_paths(run_dir: Path) -> set[str]:
    paths = {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    paths |= {rel for rel in PUSHED_FILES if (run_dir / rel).is_file()}
    paths |= {p.relative_to(run_dir).as_posix() for p in run_dir.glob("figures/*.png")}
    paths |= {p.relative_to(run_dir).as_posix() for p in run_dir.glob("eval/*.json")}
    return paths


def _assert_no_token(token: str, *texts: str, caplog: pytest.LogCaptureFixture) -> None:
    for text in texts:
        assert token not in text
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token not in str(record.args)


def _drop_every_lfs_upload(hub: HubServer) -> None:
    hub.inject("drop_lfs_upload", times=None)


def _commit_500(hub: HubServer) -> None:
    hub.inject("commit_500")


def _revoke_at_commit(hub: HubServer) -> None:
    hub.inject("revoked_token", match=r"^POST .*/commit/")


FAULTS: dict[str, tuple[Callable[[HubServer], None], str]] = {
    "drop_lfs_upload": (_drop_every_lfs_upload, "could not complete the push"),
    "commit_500": (_commit_500, "HTTP 500"),
    "revoked_token": (_revoke_at_commit, "rejected the credentials"),
}


@pytest.mark.parametrize("existing", [True, False], ids=["existing-repo", "new-repo"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failed_push_changes_nothing_and_a_retry_succeeds(
    hub: HubServer,
    run: Path,
    fast_retries: object,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    fault: str,
    existing: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    if existing:
        hub.push(REPO, SEED_FILES, message="an earlier version")
    remote_before = _remote(hub)
    local_before = _local(run)
    inject, words = FAULTS[fault]
    inject(hub)

    with pytest.raises(HubError, match=words) as err:
        push_to_hub(run, REPO, token=HUB_TOKEN)
    message = str(err.value)
    assert "nothing was pushed" in message or "unchanged" in message
    assert "\n" not in message
    if fault == "revoked_token" and not existing:
        # The push created the repo, and the revoked token cannot delete it again.
        files, history = _remote(hub)  # type: ignore[misc]
        assert set(files) == {".gitattributes"} and len(history) == 1
    else:
        assert _remote(hub) == remote_before
    assert _local(run) == local_before
    printed = capsys.readouterr()
    _assert_no_token(HUB_TOKEN, message, printed.out, printed.err, caplog=caplog)

    hub.clear_faults()
    token = HUB_TOKEN
    if fault == "revoked_token":
        with pytest.raises(HubError, match="rejected the credentials"):
            push_to_hub(run, REPO, token=HUB_TOKEN)  # a revoked token stays revoked
        hub.add_token(FRESH_TOKEN, "alice")
        token = FRESH_TOKEN
    url = push_to_hub(run, REPO, token=token)
    files, history = _remote(hub)  # type: ignore[misc]
    assert url.endswith(history[0])
    assert _expected_paths(run) <= set(files)
    assert (
        files["adapter_model.safetensors"]
        == (run / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    if remote_before is None:
        assert len(history) == 2  # the Hub's initial commit of the new repo, then the push's
    else:
        assert history[1:] == remote_before[1]  # one new commit on top of the old history
    if existing:
        assert files["notes.txt"] == SEED_FILES["notes.txt"].encode()
    assert _local(run) == local_before


def test_a_single_dropped_lfs_upload_is_absorbed(
    hub: HubServer, run: Path, fast_retries: object
) -> None:
    hub.inject("drop_lfs_upload", times=1)
    push_to_hub(run, REPO, token=HUB_TOKEN)
    statuses = [r.status for r in hub.lfs_uploads()]
    assert statuses.count(0) == 1 and statuses.count(200) > 0
    assert _expected_paths(run) <= set(hub.repo_files(REPO))
    assert len(hub.commits(REPO)) == 2


def test_failed_push_to_a_new_branch_leaves_no_branch(
    hub: HubServer, run: Path, fast_retries: object
) -> None:
    hub.push(REPO, SEED_FILES)
    before = _remote(hub)
    hub.inject("commit_500")
    with pytest.raises(HubError, match="HTTP 500"):
        push_to_hub(run, REPO, token=HUB_TOKEN, revision="experiment")
    with pytest.raises(KeyError):
        hub.repo_files(REPO, revision="experiment")  # the branch it created is gone again
    assert _remote(hub) == before
    push_to_hub(run, REPO, token=HUB_TOKEN, revision="experiment")
    assert "adapter_config.json" in hub.repo_files(REPO, revision="experiment")
    assert _remote(hub) == before  # main untouched


def test_slow_hub_is_waited_for_not_failed(hub: HubServer, run: Path) -> None:
    hub.inject("slow", seconds=1.0, match=r"^POST .*/preupload/")
    hub.inject("slow", seconds=1.0, match=r"^POST .*/commit/")
    start = time.monotonic()
    url = push_to_hub(run, REPO, token=HUB_TOKEN)
    assert time.monotonic() - start >= 2.0
    history = [c.id for c in hub.commits(REPO)]
    assert len(history) == 2 and url.endswith(history[0])
    assert _expected_paths(run) <= set(hub.repo_files(REPO))


@pytest.mark.slow
def test_push_killed_during_a_slow_commit_is_atomic_and_retry_is_idempotent(
    hub: HubServer, run: Path, tmp_path: Path
) -> None:
    """SIGKILL the ``hf-tsprompt push`` process while the Hub sits on its commit request."""
    hub.push(REPO, SEED_FILES)
    before = _remote(hub)
    local_before = _local(run)
    hub.inject("slow", seconds=4.0, match=r"^POST .*/commit/")
    env = {**os.environ, "HF_TOKEN": HUB_TOKEN}
    proc = start_process(
        [sys.executable, "-m", "hf_tsprompt", "push", str(run), "--repo-id", REPO],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        # The preupload answer is logged just before the client sends the commit.
        while not hub.requests("POST", r"/preupload/") and proc.poll() is None:
            assert time.monotonic() < deadline, "the push never reached the Hub"
            time.sleep(0.02)
        time.sleep(1.0)  # the commit request is now in the server's slow handler
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert HUB_TOKEN.encode() not in err
    time.sleep(4.0)  # let the server finish the request it was sitting on
    after = _remote(hub)
    assert after is not None and before is not None
    # All or nothing: either the old state, or the whole run on top of it in one commit.
    if after != before:
        assert after[1][1:] == before[1] and _expected_paths(run) <= set(after[0])
    assert _local(run) == local_before

    url = push_to_hub(run, REPO, token=HUB_TOKEN)
    final = _remote(hub)
    assert final is not None and url.endswith(final[1][0])
    assert final[1][1:] == before[1]  # one commit for the run, whether or not the first landed
    assert _expected_paths(run) <= set(final[0])


def _closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub(
    hub: HubServer, run: Path, fast_retries: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    endpoint = huggingface_hub.constants.ENDPOINT
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    local_before = _local(run)
    with pytest.raises(HubError, match="check the network or HF_ENDPOINT") as err:
        push_to_hub(run, REPO, token=HUB_TOKEN)
    assert HUB_TOKEN not in str(err.value)
    assert _local(run) == local_before
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)  # the network is back
    push_to_hub(run, REPO, token=HUB_TOKEN)
    assert _expected_paths(run) <= set(hub.repo_files(REPO))


def test_token_echoed_by_a_server_is_scrubbed(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that echoes the Authorization header into its error must not leak it."""
    from huggingface_hub import HfApi

    secret = "hf_SECRET_echoed_by_proxy"

    def echo(self: HfApi, *args: object, **kwargs: object) -> None:
        raise ConnectionError(f"proxy said: bad request, headers Authorization: Bearer {secret}")

    monkeypatch.setattr(HfApi, "create_repo", echo)
    with pytest.raises(HubError) as err:
        push_to_hub(run, REPO, token=secret)
    assert secret not in str(err.value) and "***" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(HubError) as err:
        push_to_hub(run, REPO)
    assert secret not in str(err.value)


def test_cli_push_failure_is_one_paragraph_without_token(
    hub: HubServer, run: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub.inject("commit_500")
    code = main(["push", str(run), "--repo-id", REPO, "--token", HUB_TOKEN])
    out, err = capsys.readouterr()
    assert code == EXIT_USER_ERROR
    assert "Traceback" not in err
    # Upload progress bars may come first; the error is the last paragraph, and only one.
    paragraph = err[err.index("error (HubError):") :].strip()
    assert "\n\n" not in paragraph and "retry" in paragraph and "HTTP 500" in paragraph
    _assert_no_token(HUB_TOKEN, out, err, caplog=caplog)
    assert _remote(hub) is None  # the repo this push created was deleted again
    assert main(["push", str(run), "--repo-id", REPO, "--token", HUB_TOKEN]) == 0
    assert capsys.readouterr().out.strip().endswith(hub.commits(REPO)[0].id)
