"""hf_tsprompt.viz.report: one self-contained HTML file for one or several runs.

The report of a real tiny run and of a copy of it with a hostile name is built once per module.
The file is checked statically (parsed with html.parser: every src is a data: URI, every href
a fragment, all sections present, hostile strings escaped) and, where Debian's ``chromium`` is
installed, loaded in headless Chromium driven over the DevTools protocol (a pipe, stdlib
only): every image must decode with a non-zero size, no request may leave the file, and the
page must log no error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hf_tsprompt.errors import MissingFileError
from hf_tsprompt.explain import explain_run, save_explain
from hf_tsprompt.viz.report import FIGURE_SECTIONS, build_report

from procs import kill_tree, start_process
from tiny import make_tiny_run

HOSTILE_NAME = (
    '</h2><script>alert("x")</script><img src="http://evil.example/x.png" onerror=1>$\\frac$'
)
HOSTILE_TASK = "<b onmouseover=alert(1)>gsm8k</b>"
HOSTILE_DIR = "<i>evil$x$&run"
RUN_SECTIONS = ("config", "accuracy", *(key for key, _, _ in FIGURE_SECTIONS), "explain")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run, _, _ = make_tiny_run(root, peft={"num_virtual_tokens": 8})
    hostile = root / "other" / HOSTILE_DIR
    shutil.copytree(run, hostile)
    info = json.loads((hostile / "run.json").read_text())
    info.update(name=HOSTILE_NAME, task=HOSTILE_TASK, accuracy_after=0.75)
    (hostile / "run.json").write_text(json.dumps(info))
    return run, hostile


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report.html"
    return build_report(list(runs), out)


class _Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_is_self_contained(report):
    page = _parse(report)
    tags = {t for t, _ in page.tags}
    assert "script" not in tags and "iframe" not in tags and "link" not in tags
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) >= 2 * 10
    for attrs in imgs:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "srcset", "action", "poster", "data"):
                assert value.startswith(("data:", "#")), (tag, name, value)
            assert not name.startswith("on"), (tag, name)  # no event handler attribute
    raw = report.read_text(encoding="utf-8")
    assert "http://" not in raw.replace("&quot;http://evil.example", "")
    assert "https://" not in raw and "url(" not in raw and "@import" not in raw


def test_report_has_every_section_for_every_run(report, runs):
    page = _parse(report)
    ids = {a.get("id") for _, a in page.tags}
    assert "compare" in ids and "compare-figures" in ids and "compare-side-by-side" in ids
    for i in (1, 2):
        assert f"run-{i}" in ids
        for key in RUN_SECTIONS:
            assert f"run-{i}-{key}" in ids
    text = " ".join(page.text)
    for word in ("Configuration", "Accuracy", "Loss curves", "Topology curves", "Barcodes"):
        assert word in text
    assert "PCA and t-SNE" in text and "Distance heatmaps" in text
    assert "nearest vocabulary tokens" in text and "cosine similarity" in text
    assert "Recipe keys that differ" in text
    assert "75.0%" in text  # the copy's accuracy_after, in the comparison table
    # the explain table: one row per virtual token, with the tokens' cosines
    assert "merge scale" in text and "Longest-lived H0 components" in text
    # each run shows its barcodes (alt text names the figure)
    alts = [a.get("alt", "") for t, a in page.tags if t == "img"]
    assert sum(a.startswith("barcodes.png of ") for a in alts) == 2


def test_report_shows_the_structural_evolution(report, runs):
    from hf_tsprompt.records import evolution_stats, read_records

    page = _parse(report)
    text = " ".join(page.text)
    alts = [a.get("alt", "") for t, a in page.tags if t == "img"]
    assert sum(a.startswith("evolution.png of ") for a in alts) == 2
    stats = evolution_stats(read_records(runs[0]))
    assert stats["h0_wasserstein"]["intervals"] == 2 and stats["h0_wasserstein"]["max"] > 0
    # the per-run table (mean, max) and the comparison row (mean / max) carry the numbers
    cells = page.text
    for label, key in (
        ("H0 Wasserstein (W1)", "h0_wasserstein"),
        ("H1 bottleneck", "h1_bottleneck"),
    ):
        mean, top = f"{stats[key]['mean']:.4g}", f"{stats[key]['max']:.4g}"
        i = cells.index(label)
        assert cells[i + 1 : i + 3] == [mean, top]
        assert f"{label} to the previous snapshot (mean / max)" in text
        assert f"{mean} / {top}" in text
    assert "over 2 snapshot interval(s)" in text


def test_hostile_strings_are_escaped(report):
    raw = report.read_text(encoding="utf-8")
    page = _parse(report)
    text = "".join(page.text)
    # They reach the reader as text, unchanged...
    assert HOSTILE_NAME in text and HOSTILE_TASK in text and HOSTILE_DIR in text
    # ...and never as markup.
    for needle in ("<script", "<b onmouseover", "<i>evil", 'src="http'):
        assert needle not in raw
    assert all(t != "script" and "onerror" not in a for t, a in page.tags)


def test_single_run_reuses_a_saved_explain_and_leaves_the_run_alone(runs, tmp_path):
    run, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    save_explain(explain_run(copy, top_k=2), copy)  # newer than the records: reused
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    out = build_report(copy, tmp_path)  # a folder: report.html inside it
    assert out == tmp_path / "report.html"
    page = _parse(out)
    ids = {a.get("id") for _, a in page.tags}
    assert "compare" not in ids and {"run-1", "run-1-explain"} <= ids
    assert "Top 2 nearest vocabulary tokens" in " ".join(page.text)  # the saved top_k
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before  # read-only
    with pytest.raises(MissingFileError):
        build_report([tmp_path / "missing"], tmp_path / "x.html")


def test_a_figure_failure_leaves_a_note_not_a_crash(runs, tmp_path):
    run, _ = runs
    bad = tmp_path / "bad$\\frac$run"  # matplotlib cannot typeset this folder name in a title
    shutil.copytree(run, bad)
    out = build_report(bad, tmp_path / "r.html", explain=False)
    page = _parse(out)
    text = " ".join(page.text)
    assert "figures failed" in text and "not available" in text
    assert "<img" not in out.read_text()


# --- headless Chromium ---------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _high_fd(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or above (the original is closed)."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _DevTools:
    """Chrome DevTools protocol over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4:
    replies and events out; each message is JSON followed by a NUL byte)."""

    def __init__(self, binary: str, profile: str) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # A small Python trampoline puts the pipe ends on the file descriptors 3 and 4 that
        # Chromium expects (first moved to 10 and above, so that neither dup2 can clobber the
        # other end), then becomes Chromium.
        cmd_r, out_w = (_high_fd(fd) for fd in (cmd_r, out_w))
        trampoline = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.proc = start_process(
            [
                sys.executable,
                "-c",
                trampoline,
                str(cmd_r),
                str(out_w),
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(cmd_r, out_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        finally:
            os.close(self._cmd_w)
            os.close(self._out_r)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
            kill_tree(self.proc)  # Chromium's own children too, not only the browser


# Resolves once every image has decoded (or failed); reports each image's natural size.
IMAGES_JS = """
Promise.all([...document.images].map(img => img.decode().then(
    () => ({w: img.naturalWidth, h: img.naturalHeight, err: null, alt: img.alt}),
    e => ({w: img.naturalWidth, h: img.naturalHeight, err: String(e), alt: img.alt}))))
"""


@dataclass
class _Load:
    """What a page did in the browser."""

    url: str
    title: str
    images: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    requested: list[str]


def _load_in_chromium(path: Path) -> _Load:
    """Open ``path`` in headless Chromium; its images, errors and requests once loaded."""
    url = path.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="hf-tsprompt-chromium-") as profile:
        browser = _DevTools(_chromium(), profile)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Page.navigate", {"url": url}, session=session)
            browser.wait_for("Page.loadEventFired", timeout=60)
            images = browser.call(
                "Runtime.evaluate",
                {"expression": IMAGES_JS, "awaitPromise": True, "returnByValue": True},
                session=session,
                timeout=60,
            )["result"]["value"]
            title = browser.call(
                "Runtime.evaluate",
                {"expression": "document.title", "returnByValue": True},
                session=session,
            )["result"]["value"]
        finally:
            browser.close()
    events = [e for e in browser.events if e.get("sessionId") == session]
    errors = [
        e
        for e in events
        if e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
        or (
            e.get("method") == "Runtime.consoleAPICalled"
            and e["params"].get("type") in ("error", "assert", "warning")
        )
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    requested = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    return _Load(url, title, images, errors, requested)


needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs "
    "it), so the report cannot be checked in a real browser here",
)


@pytest.mark.slow
@needs_chromium
def test_report_loads_in_headless_chromium(report):
    page = _load_in_chromium(report)
    assert HOSTILE_NAME in page.title  # the hostile name arrived as text, not as markup
    assert len(page.images) >= 20
    broken = [img for img in page.images if img["err"] or img["w"] <= 0 or img["h"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    assert not page.errors, f"the page logged errors: {page.errors}"
    assert page.url in page.requested  # the network events were seen at all
    outside = [u for u in page.requested if u != page.url and not u.startswith("data:")]
    assert not outside, f"the report requested resources outside itself: {outside}"


@pytest.mark.slow
@needs_chromium
def test_chromium_check_sees_broken_pages(tmp_path):
    """Negative control: the checks above do catch a broken image, an outside request and a
    script error (the port is closed; nothing leaves the machine)."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        '<img src="data:image/png;base64,iVBORw0KGgoAAAAA" alt="corrupt">'
        '<img src="http://127.0.0.1:9/x.png" alt="outside">'
        "<script>throw new Error('boom')</script></body></html>"
    )
    page = _load_in_chromium(bad)
    assert {img["alt"] for img in page.images if img["err"] or img["w"] <= 0} == {
        "corrupt",
        "outside",
    }
    assert "http://127.0.0.1:9/x.png" in page.requested
    methods = {e["method"] for e in page.errors}
    assert "Runtime.exceptionThrown" in methods
    assert "Network.loadingFailed" in methods
