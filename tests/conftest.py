"""Shared fixtures: tiny offline models (see ``tiny.py``) and a local Hugging Face Hub.

The local Hub (``hub_server.py``, fixtures ``hub`` / ``hub_server`` / ``fast_retries`` at the
end of this file) is served on a free loopback port. huggingface_hub reads ``HF_ENDPOINT``,
``HF_HUB_DISABLE_XET`` and ``HF_HOME`` only when it is first imported (transformers and peft
import it), so the end of this module sets them at conftest import time, before any test module
is collected; ``HF_HOME`` is a fresh temporary directory, so tests never touch the user's cache
or stored token. Nothing this module imports loads huggingface_hub before that point, and the
``hub_server`` fixture fails loudly if it ever does.
"""

from __future__ import annotations

import os

import pytest
import torch

import procs
from tiny import save_tiny_model, tiny_llama, tiny_tokenizer

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker (and per subprocess a test starts): two workers with
    # two OpenMP threads each on two cores spin against each other and run ~10x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return tiny_llama(vocab_size=len(tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads a model: what it checks must fail (or pass) first."""
    import hf_tsprompt.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe and its data were checked")

    monkeypatch.setattr(hf_tsprompt.models, "load_base_model", refuse)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _kill_started_processes():
    """Every process a test started with ``procs.start_process`` dies with the test, whole
    process group and all, pass or fail (a module fixture's are killed at exit, below)."""
    mark = procs.started_count()
    yield
    procs.kill_started(since=mark)


# ---------------------------------------------------------------------------------------------
# Local Hugging Face Hub (see hub_server.py)
#
# huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME, ... once, when it is first
# imported (huggingface_hub/constants.py), and transformers / peft import it. So the variables
# are set here, at conftest import time, before any test module is collected: nothing imported
# above (torch, tiny) pulls in huggingface_hub, and the `hub_server` fixture double-checks it.
# The server socket is bound right away (port 0 -> a free loopback port, reserved for this
# process, so pytest-xdist workers each get their own server); the fixture starts serving.
# HF_HOME points at a fresh temporary directory, so no test reads or writes the user's cache
# or stored token; subprocesses inherit all of this through os.environ.
# ---------------------------------------------------------------------------------------------
import atexit  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from hub_server import HubServer  # noqa: E402

HUB_TOKEN = "hf_test_token"
"""Write token of user ``alice`` on the local hub."""
HUB_USER = "alice"
OTHER_TOKEN = "hf_other_token"
"""Token of user ``bob``, who may not write to ``alice/*`` (permission tests)."""
OTHER_USER = "bob"

_HUB = HubServer(tokens={HUB_TOKEN: HUB_USER, OTHER_TOKEN: OTHER_USER})
_HF_HOME = tempfile.mkdtemp(prefix="hf-tsprompt-hfhome-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
atexit.register(procs.kill_started)  # what a module/session fixture started, if still alive

for _var in (
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
    "HF_DATASETS_CACHE",
    "TRANSFORMERS_CACHE",
):
    os.environ.pop(_var, None)
os.environ.update(
    HF_ENDPOINT=_HUB.url,
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HOME=_HF_HOME,
)


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """The session's local Hub at ``HF_ENDPOINT``; tokens ``HUB_TOKEN`` (alice), ``OTHER_TOKEN``
    (bob). Prefer ``hub``, which also resets the state for each test."""
    _HUB.start()
    _HUB.assert_client_configured()
    yield _HUB
    _HUB.stop()


@pytest.fixture
def hub(hub_server: HubServer) -> Iterator[HubServer]:
    """``hub_server`` with no repos, faults, log entries or revoked tokens; fails the test if
    the server hit an internal error (a server bug, see ``HubServer.errors``)."""
    hub_server.reset()
    yield hub_server
    errors = list(hub_server.errors)
    hub_server.reset()
    assert not errors, "hub_server internal errors:\n" + "\n".join(errors)


class _NoSleep:
    """Stand-in for the ``time`` module whose ``sleep`` returns at once."""

    def __getattr__(self, name: str) -> object:
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        return None


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Make huggingface_hub's retry back-off (1 to 8 s between 6 attempts in ``http_backoff``,
    1 s before resuming a download) instant, so fault tests that exhaust retries stay fast.
    Only the client's sleeping changes; every request still goes over HTTP."""
    import huggingface_hub.file_download as file_download
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http, "time", _NoSleep())
    monkeypatch.setattr(file_download, "time", _NoSleep())
    return SimpleNamespace(max_attempts=6)
