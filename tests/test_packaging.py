"""The wheel is the product: what ``pip install hf-tsprompt`` gets, tested outside the checkout.

Every other test imports the editable checkout, which reads files the wheel may not carry (the
card template once lived only in the top-level ``model_cards/``, so an installed package wrote
no card and could not push). Here:

- the packages pyproject.toml lists are the packages of the tree (it lists them by hand,
  because it maps ``model_cards/`` into the package);
- every declared dependency is imported by the library, or is one that a library it calls
  needs at run time (named below, with the reason);
- the wheel holds exactly the package's files, the card template mapped from ``model_cards/``,
  and the declared dependencies and console script;
- installed non-editable into a fresh virtual environment, with the checkout out of reach, the
  wheel's console script trains a tiny run (card included), pushes it to the local Hub
  (tests/hub_server.py), and plain peft loads it back from there.

The virtual environment sees the test environment's packages and pip installs the wheel with
``--no-index``: the declared dependencies must already be satisfied, nothing is downloaded, and
the step takes seconds rather than the minutes a full dependency install takes on a 2-core
machine. It sees them through a ``.pth`` file naming the test interpreter's own site-packages
folders, not through ``venv --system-site-packages``: run from inside a virtual environment (as
.ci/run and most users do), that option gives the *base* interpreter's site-packages, which
need not hold transformers at all. A folder named in a ``.pth`` line is put on ``sys.path``
without its own ``.pth`` files being run, so the test environment's editable install of this
checkout stays out of the new environment. Packages that the library needs but does not
declare are caught by the dependency test instead. Measured on 2 cores shared with other jobs
(load average 13): 4 minutes for the module; wheel build 12 s, venv 1 s, pip install 32 s,
train 89 s, push 15 s, load back 36 s (each step prints its time; run with -s to see them).
A fully fresh environment (all dependencies installed into it) took 6.5 minutes on its own.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import time
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from procs import run_process
from tiny import TINY_HUB_ID, save_tiny_hub_model, tiny_recipe, write_tiny_gsm8k

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
REPO = "alice/wheel-tsloss"
HUB_TOKEN = "hf_test_token"  # alice's write token on the local hub (tests/conftest.py)

#: Declared dependencies the library does not import itself, and who needs them at run time.
RUNTIME_ONLY = {
    "gguf": "transformers reads the embedded models' GGUF files with it ([embedded] extra)",
    "jinja2": "huggingface_hub's ModelCard.from_template renders the card with it",
    "safetensors": "peft saves and loads adapters as safetensors with it",
}
#: Imported only on a path that exists only when the user installed it.
OPTIONAL_IMPORTS = {"deepspeed": "reached only for a prompt that DeepSpeed ZeRO-3 partitioned"}


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str | None = None) -> dict[str, Requirement]:
    """The core dependencies, or with ``extra`` that optional extra's own list."""
    project = PYPROJECT["project"]
    listed = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    reqs = (Requirement(r) for r in listed)
    return {_dist_name(r.name): r for r in reqs}


#: The subpackage of each optional extra whose modules may import that extra's packages
#: (hf_tsprompt/extras.py); every other module may import the core dependencies only.
EXTRA_PACKAGES = {"viz": "viz", "embedded": "embedded"}


def _tree_packages() -> set[str]:
    """Every package of the source tree, with model_cards/ under its installed name."""
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "hf_tsprompt").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    if (ROOT / "model_cards" / "__init__.py").is_file():
        found.add("hf_tsprompt.model_cards")
    return found


def _package_files() -> set[str]:
    """Paths (as in the wheel) of every file the installed package must carry."""
    files = set()
    for src, dest in (("hf_tsprompt", "hf_tsprompt"), ("model_cards", "hf_tsprompt/model_cards")):
        for path in (ROOT / src).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(f"{dest}/{path.relative_to(ROOT / src).as_posix()}")
    return files


def test_pyproject_lists_every_package_of_the_tree():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _tree_packages(), (
        "[tool.setuptools] packages in pyproject.toml must list every package under "
        "hf_tsprompt/ (a new subpackage is not found automatically) and hf_tsprompt.model_cards"
    )
    assert setuptools["package-dir"] == {"hf_tsprompt.model_cards": "model_cards"}
    assert (ROOT / "model_cards" / "adapter_card.md.jinja").is_file()


def test_card_template_is_read_as_package_data():
    """In this (editable) install too, the template comes from the package, not a file path."""
    from importlib.resources import files

    from hf_tsprompt.hub import CARD_TEMPLATE, card_template

    resource = files("hf_tsprompt.model_cards").joinpath(CARD_TEMPLATE)
    assert resource.read_text(encoding="utf-8") == card_template()
    expected = (ROOT / "model_cards" / CARD_TEMPLATE).read_text(encoding="utf-8")
    assert card_template() == expected


def _imported_top_level_modules(under: str | None = None) -> set[str]:
    """Top-level names the package's modules import; with ``under`` only that subpackage's,
    without it only the modules outside every extra's subpackage."""
    names = set()
    extras_dirs = {ROOT / "hf_tsprompt" / sub for sub in EXTRA_PACKAGES.values()}
    for path in (ROOT / "hf_tsprompt").rglob("*.py"):
        inside = {d for d in extras_dirs if d in path.parents}
        if (under is None and inside) or (
            under is not None and ROOT / "hf_tsprompt" / under not in path.parents
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_used_and_every_import_declared():
    """Core modules import core dependencies only; an extra's subpackage may add its extra's."""
    declared = _declared()
    all_declared = dict(declared)
    providers = packages_distributions()  # top-level module -> distributions installed
    used: set[str] = set()
    undeclared = []
    scopes = [(None, declared)]
    for extra, sub in EXTRA_PACKAGES.items():
        scopes.append((sub, declared | _declared(extra)))
        all_declared |= _declared(extra)
    for under, allowed in scopes:
        for module in sorted(_imported_top_level_modules(under)):
            if module in sys.stdlib_module_names or module in {"hf_tsprompt", *OPTIONAL_IMPORTS}:
                continue
            dists = {_dist_name(d) for d in providers.get(module, [])}
            if dists & allowed.keys():
                used |= dists & allowed.keys()
            else:
                found = sorted(dists) or "no installed distribution"
                undeclared.append(f"{module} in {under or 'the core'} (from {found})")
    assert not undeclared, f"hf_tsprompt imports undeclared packages: {undeclared}"
    declared = all_declared
    unused = sorted(declared.keys() - used - RUNTIME_ONLY.keys())
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
    assert not used & RUNTIME_ONLY.keys(), f"imported now: {used & RUNTIME_ONLY.keys()}"
    assert "evaluate" not in declared  # dropped: see the comment in pyproject.toml


def _build_source(root: Path) -> Path:
    """A copy of exactly what the distributions are built from (the checkout stays clean:
    setuptools writes build/ and *.egg-info beside the sources)."""
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("hf_tsprompt", "model_cards"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of exactly what it is built from (:func:`_build_source`)."""
    src = _build_source(tmp_path_factory.mktemp("wheel-src"))
    out = tmp_path_factory.mktemp("dist")
    # No build isolation and no index: the installed setuptools builds it, nothing is fetched.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = run_process([*pip_wheel, "--no-index", str(src), "-w", str(out)], timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (built,) = out.glob("hf_tsprompt-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_the_package_its_template_and_its_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert {n for n in names if not n.startswith(dist_info)} == _package_files()
    assert "hf_tsprompt/model_cards/adapter_card.md.jinja" in names
    assert "hf_tsprompt/py.typed" in names
    with zipfile.ZipFile(wheel) as zf:  # the license pyproject declares, as a license file
        assert zf.read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    shipped = {
        _dist_name(r.name): r
        for r in map(Requirement, re.findall(r"^Requires-Dist: (.+)$", metadata, flags=re.M))
        if r.marker is None  # the `test` extra's requirements carry a marker
    }
    assert {k: str(v) for k, v in shipped.items()} == {k: str(v) for k, v in _declared().items()}
    extras = set(re.findall(r"^Provides-Extra: (.+)$", metadata, flags=re.M))
    assert extras == set(PYPROJECT["project"]["optional-dependencies"])
    assert "hf-tsprompt = hf_tsprompt.cli:main" in entry_points


@pytest.mark.slow
def test_sdist_ships_the_license(tmp_path):
    import tarfile

    src = _build_source(tmp_path)
    out = tmp_path / "dist"
    build = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
    done = run_process([sys.executable, "-c", build, str(out)], cwd=src, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (sdist,) = out.glob("hf_tsprompt-*.tar.gz")
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("/LICENSE")]
        assert tar.extractfile(member).read() == (ROOT / "LICENSE").read_bytes()
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


_CHECK_INSTALL = r"""
import json, sys
from importlib.resources import files
import hf_tsprompt, hf_tsprompt.hub, hf_tsprompt.cli
checkout = sys.argv[1]
template = files("hf_tsprompt.model_cards").joinpath("adapter_card.md.jinja")
from_checkout = sorted(
    name for name, mod in sys.modules.items()
    if str(getattr(mod, "__file__", None) or "").startswith(checkout)
)
print(json.dumps({"file": hf_tsprompt.__file__, "template": str(template),
                  "from_checkout": from_checkout}))
"""

_LOAD = r"""
import json, sys, torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
base_dir, repo, saved = sys.argv[1:4]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), repo)
weight = model.prompt_encoder["default"].embedding.weight.detach()
(expected,) = load_file(saved).values()
print(json.dumps({"equal": torch.equal(weight, expected), "shape": list(weight.shape),
                  "sys_modules_hf_tsprompt": "hf_tsprompt" in sys.modules}))
"""


def _site_packages() -> list[str]:
    """The site-packages folders of the interpreter running the tests, venv or not."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]


def _see_test_environment(venv: Path) -> None:
    """Make the new venv import the test environment's packages (after its own)."""
    (purelib,) = venv.glob("lib/python*/site-packages")
    (purelib / "test-environment.pth").write_text("\n".join(_site_packages()) + "\n")


def test_the_wheel_venv_sees_this_environment_not_the_base_interpreter():
    """``_see_test_environment`` names the running interpreter's site-packages, where
    transformers is installed, in a venv or not (``--system-site-packages`` would name the
    base interpreter's, which from inside a venv need not hold it)."""
    import transformers

    sites = _site_packages()
    assert sites and all(Path(p).is_dir() for p in sites)
    assert any(Path(transformers.__file__).is_relative_to(p) for p in sites)
    if sys.prefix != sys.base_prefix:  # in a venv: its own site-packages come first
        assert Path(sites[0]).is_relative_to(sys.prefix)


def _recipe(root: Path) -> Path:
    model_dir = save_tiny_hub_model(root / "tiny-model")
    data_dir = write_tiny_gsm8k(root / "gsm8k")
    recipe = tiny_recipe(model_dir, data_dir, name="wheel-run", output_dir=str(root / "run"))
    path = root / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


@pytest.mark.slow
def test_installed_wheel_trains_writes_a_card_pushes_and_loads_back(wheel, hub, tmp_path):
    venv = tmp_path / "venv"
    bindir = venv / "bin"
    # The checkout must be out of reach: no PYTHONPATH, a working directory outside it, and
    # `python -I` (no script directory or user site on sys.path) for inline scripts.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_TOKEN=HUB_TOKEN)
    work = tmp_path / "work"
    work.mkdir()

    def run(*cmd: str | Path, timeout: float) -> str:
        started = time.perf_counter()
        done = run_process([str(c) for c in cmd], cwd=work, env=env, timeout=timeout)
        print(f"{time.perf_counter() - started:6.1f} s  {' '.join(map(str, cmd))[:100]}")
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return done.stdout

    run(sys.executable, "-m", "venv", "--without-pip", venv, timeout=120)
    _see_test_environment(venv)
    run(
        sys.executable, "-m", "pip", "--python", bindir / "python", "install", "--no-index",
        "--no-cache-dir", wheel, timeout=300,
    )  # fmt: skip
    site = json.loads(run(bindir / "python", "-I", "-c", _CHECK_INSTALL, ROOT, timeout=120))
    assert Path(site["file"]).is_relative_to(venv), site
    assert Path(site["template"]).is_relative_to(venv), site
    assert site["from_checkout"] == []

    recipe = _recipe(work)
    log = run(bindir / "hf-tsprompt", "train", recipe, timeout=600)
    run_dir = work / "run"
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert "model card failed" not in log
    assert "AutoPeftModelForCausalLM" in card and str(work) not in card
    assert f"base_model:adapter:{TINY_HUB_ID}" in card

    run(bindir / "hf-tsprompt", "push", run_dir, "--repo-id", REPO, timeout=300)
    files = hub.repo_files(REPO)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    pushed_card = files["README.md"].decode()
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in pushed_card

    saved = run_dir / "adapter" / "adapter_model.safetensors"
    loaded = json.loads(
        run(bindir / "python", "-I", "-c", _LOAD, work / "tiny-model", REPO, saved, timeout=300)
    )
    assert loaded == {"equal": True, "shape": [6, 32], "sys_modules_hf_tsprompt": False}


# --- what the README's commands install ----------------------------------------------------


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
            pins[_dist_name(req.name)] = spec.version
    return pins


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart, flags=re.S)


def test_the_readme_commands_install_what_ci_tested():
    """Exactly two commands, each installing with constraints.txt; .ci/run runs the second
    verbatim (its pinned pass), and its other passes use the newest releases and the lower
    bounds."""
    install, tests = _readme_commands()
    for command in (install, tests):
        for pip in re.findall(r"python -m pip install [^&]+", command):
            assert "-c constraints.txt" in pip, pip
    assert install.endswith("hf-tsprompt train recipes/smollm2-bbh-boolean.yaml")
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"\n        {tests}\n" in ci
    assert "-c constraints-lowest.txt" in ci and "--upgrade-strategy eager" in ci
    assert "--system-site-packages" not in ci  # fresh venvs: nothing from the machine's site


def test_constraints_pin_every_dependency_and_the_lower_bounds_are_the_tested_ones():
    pinned, lowest = _pins("constraints.txt"), _pins("constraints-lowest.txt")
    assert pinned.keys() == lowest.keys()
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = [Requirement(r) for listed in extras.values() for r in listed]
    for req in [*_declared().values(), *optional]:
        name = _dist_name(req.name)
        assert name in pinned, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} outside {req}"
        assert req.specifier.contains(lowest[name]), f"{name}=={lowest[name]} outside {req}"
    every = {
        **_declared(),
        **{k: v for e in extras if e != "test" for k, v in _declared(e).items()},
    }
    for name, req in every.items():
        (bound,) = req.specifier
        assert bound.operator == ">=", f"{req}: a range with a tested lower bound"
        # torch's bound is its minor release: the CPU build is 2.13.0+cpu
        assert lowest[name] == bound.version or lowest[name].startswith(f"{bound.version}."), (
            f"{name}: pyproject's lower bound {bound.version} is not the tested "
            f"{lowest[name]} of constraints-lowest.txt"
        )
