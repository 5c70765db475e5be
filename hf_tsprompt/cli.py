"""The ``hf-tsprompt`` command line: thin glue over :mod:`hf_tsprompt.pipeline` and friends.

Every subcommand works on files (a recipe, or a run folder written by ``train``), so each
stage can be re-run on its own. User errors (a bad recipe, a missing file, a rejected token)
print one paragraph and exit with status 2, without a traceback; anything else is a bug and
keeps its traceback.

Plugins: what a user registers from Python (a regulariser, a task, a prompt method, a metric)
reaches the command line through a module the CLI imports before it runs the command, named
with ``--plugin MODULE`` or declared by an installed distribution under the entry-point group
:data:`PLUGIN_GROUP` (the way pytest finds its plugins), so a recipe can name it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from ._version import __version__
from .errors import ConfigError, UserError
from .runs import FIGURES_DIR, REPORT_FILE

__all__ = [
    "EXIT_USER_ERROR",
    "PLUGIN_GROUP",
    "build_parser",
    "load_plugins",
    "main",
]

EXIT_USER_ERROR = 2
#: Entry-point group of installed plugins: ``[project.entry-points."hf_tsprompt.plugins"]``
#: ``name = "module"`` (or ``"module:function"``, called with no arguments once imported).
PLUGIN_GROUP = "hf_tsprompt.plugins"

_EPILOG = """\
examples:
  hf-tsprompt train recipes/smollm2-gsm8k.yaml
  hf-tsprompt train recipes/smollm2-gsm8k.yaml --set ts.weight=0 --set name=ce-only
  hf-tsprompt evaluate runs/smollm2-gsm8k
  hf-tsprompt plot runs/ce-only runs/smollm2-gsm8k --labels CE TSLoss --out figures/
  hf-tsprompt analyze runs/*
  hf-tsprompt explain runs/smollm2-gsm8k
  hf-tsprompt report runs/ce-only runs/smollm2-gsm8k --labels CE TSLoss
  hf-tsprompt push runs/smollm2-gsm8k --repo-id me/smollm2-gsm8k-tsloss
  hf-tsprompt --plugin my_regularizers train my-recipe.yaml
  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m hf_tsprompt train RECIPE
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import format_summary, train_from_recipe
    from .recipes import load_recipe

    recipe = load_recipe(args.recipe, args.set or [], variant=args.variant)
    if args.dry_run:
        from .pipeline import training_config

        training_config(recipe, recipe.run_dir.resolve())  # what this machine cannot honour
        print(recipe.to_yaml(), end="")
        print(f"# recipe is valid; the run folder would be {recipe.run_dir}", file=sys.stderr)
        return 0
    result = train_from_recipe(
        recipe, overwrite=args.overwrite, resume=args.resume, progress=not args.quiet
    )
    if result.is_main_process:
        print(format_summary(result))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .finished import evaluate_run

    dpc = None
    if args.dpc:
        from .paper.dpc import DPCConfig

        dpc = DPCConfig(trigger_ratio=args.dpc_trigger_ratio)
    result = evaluate_run(
        args.run_dir,
        name=args.name,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        calibration=args.calibration,
        dpc=dpc,
        progress=not args.quiet,
    )
    extra = ""
    if args.dpc:
        fired = sum(bool(p.get("dpc", {}).get("triggered")) for p in result.predictions)
        extra = f"; DPC triggered on {fired}/{result.total}"
    print(f"accuracy: {100 * result.accuracy:.1f}% ({result.correct}/{result.total}){extra}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .viz.plots import plot_run, plot_runs

    if args.labels and len(args.labels) != len(args.run_dirs):
        raise _usage(f"--labels needs one label per run folder ({len(args.run_dirs)}).")
    if len(args.run_dirs) == 1:
        paths = plot_run(args.run_dirs[0], args.out)
    else:
        paths = plot_runs(args.run_dirs, args.out or FIGURES_DIR, labels=args.labels)
    for path in paths:
        print(path)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_runs

    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else "analysis")
    md, js = analyze_runs(args.run_dirs, out)
    print(Path(md).read_text(encoding="utf-8"))
    print(f"written: {md} and {js}", file=sys.stderr)
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from .cards import save_model_card

    print(save_model_card(args.run_dir, args.repo_id, base_model=args.base_model))
    return 0


_BASE_MODEL_HELP = (
    "the base model's Hub id, for a run trained on a local folder that names none (or set "
    "model.hub_id in the recipe); embedded models, Hub ids and HF cache folders need none"
)


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    url = push_to_hub(
        args.run_dir,
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.message,
        base_model=args.base_model,
        private_base=args.private_base,
    )
    print(url)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_run, format_explain, save_explain

    result = explain_run(args.run_dir, top_k=args.top_k)
    json_path, md_path = save_explain(result, args.run_dir)
    print(format_explain(result))
    print(f"written: {json_path} and {md_path}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .viz.report import build_report

    if args.labels and len(args.labels) != len(args.run_dirs):
        raise _usage(f"--labels needs one label per run folder ({len(args.run_dirs)}).")
    out = args.out or (
        Path(args.run_dirs[0]) / REPORT_FILE if len(args.run_dirs) == 1 else Path(REPORT_FILE)
    )
    print(build_report(args.run_dirs, out, labels=args.labels))
    return 0


def load_plugins(modules: Sequence[str] = ()) -> list[str]:
    """Import the installed plugins (entry-point group :data:`PLUGIN_GROUP`), then ``modules``.

    A plugin registers what it adds when imported (``register_regularizer``,
    ``register_task``, ...); an entry point that names a function (``module:function``) has it
    called with no arguments. ``modules`` are found as ``python -m`` finds them: the current
    directory comes first on ``sys.path`` (a ``my_tasks.py`` beside the recipe needs no
    ``PYTHONPATH``). Returns what was loaded, in order: ``dist:name`` for an entry
    point, the module name otherwise. Raises :class:`~hf_tsprompt.errors.ConfigError` naming
    the plugin when one cannot be imported or fails while registering.
    """

    loaded: list[str] = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        dist = getattr(ep.dist, "name", None) or "?"
        label = f"{dist}:{ep.name}"
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as err:  # a broken plugin is the user's to fix: say which one
            raise _usage(
                f"the plugin {ep.name!r} ({ep.value}) installed by {dist!r} under the entry-point "
                f"group {PLUGIN_GROUP!r} failed to load: {type(err).__name__}: {err}. Fix or "
                "uninstall that package."
            ) from err
        loaded.append(label)
    if modules:
        cwd = str(Path.cwd())
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
            importlib.invalidate_caches()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise _usage(
                f"--plugin {name}: cannot import it ({err}). Give an importable module name "
                "(dotted, no '.py'): a module in the current directory, installed, or on "
                "PYTHONPATH."
            ) from err
        except Exception as err:
            raise _usage(
                f"--plugin {name}: importing it failed: {type(err).__name__}: {err}"
            ) from err
        loaded.append(name)
    return loaded


def _usage(message: str) -> UserError:
    return ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-tsprompt",
        description=(
            "Soft prompt tuning regularised and explained by topology (TSLoss). Train a peft "
            "soft prompt from a YAML recipe, record its persistence barcodes, evaluate, plot, "
            "analyse, and push it to the Hugging Face Hub."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hf-tsprompt {__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help=(
            "import MODULE before the command, so what it registers (a regulariser, task, "
            f"prompt method, metric) can be named in a recipe; repeatable. Plugins installed "
            f"under the entry-point group {PLUGIN_GROUP} are imported too"
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="run a recipe: train a soft prompt and write a run folder",
        description=(
            "Run a recipe end to end: evaluate the base model, train the soft prompt with "
            "TSLoss while recording persistence barcodes, evaluate again, draw the figures "
            "and render the model card into the run folder (runs/<name> by default)."
        ),
    )
    p.add_argument("recipe", help="YAML recipe (see recipes/)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set ts.weight=0.5 --set training.max_steps=100",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="a named variant declared in the recipe (e.g. a baseline: soft-prompt, l2, ...)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--dry-run", action="store_true", help="validate and print the recipe only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="re-run the test evaluation of a run folder",
        description="Load the base model with the run's adapter and score the test subset again "
        "(greedy generation); writes eval/<name>.json and eval/<name>_predictions.jsonl.",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--name",
        default=None,
        help="output name under eval/ (default: after, after_act or after_dpc)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="score only the first N test rows")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--calibration",
        choices=("none", "act"),
        default="none",
        help="act: attention calibration (ACT, Yu et al. 2024): heads searched on the run's "
        "training rows, saved in <run>/calibration/act.json and reused",
    )
    group.add_argument(
        "--dpc",
        action="store_true",
        help="dynamic prompt corruption (DPC, Fan et al. 2025): mask the most influential "
        "prompt token and regenerate when the prompt's influence on the answer is judged harmful",
    )
    p.add_argument(
        "--dpc-trigger-ratio",
        type=float,
        default=0.5,
        help="DPC fires when this share of the answer's latter half exceeds the prompt-flow "
        "baseline (default 0.5)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "plot",
        help="draw the paper's figures for one run, or overlay several",
        description="One run folder: every figure into <run>/figures (or --out). Several: the "
        "overlay figures (topology curves, entropy, density, loss, accuracy) side by side.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--labels", nargs="+", default=None, help="legend label per run")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "analyze",
        help="Table II correlations and Table IV convergence steps",
        description="Spearman rho and Mann-Whitney U between each topology metric and accuracy "
        "across the snapshots of the given runs (Table II), and the first step with 100%% "
        "training accuracy (Table IV). Writes analysis.md and analysis.json.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder (default: the run folder)")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "explain",
        help="what the prompt reads like: nearest vocabulary tokens, H0 components, H1 loops",
        description="For each virtual token, its nearest vocabulary tokens by cosine similarity "
        "(the PGSPT projection) at the start and the end of training; which tokens are the "
        "long-lived H0 components, and which vectors form the H1 loops that disappear. Writes "
        "explain.json and explain.md into the run folder.",
    )
    p.add_argument("run_dir")
    p.add_argument("--top-k", type=int, default=5, help="neighbours per virtual token")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of one or several runs",
        description="Configuration, accuracy, loss and topology curves, barcodes, heatmaps, "
        "PCA/t-SNE and the explain table of each run, side by side, in one HTML file with "
        "every image embedded (default: <run>/report.html, or ./report.html for several).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output HTML file")
    p.add_argument("--labels", nargs="+", default=None, help="label per run")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("card", help="(re)render the model card README.md of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--repo-id", default=None, help="repo id used in the loading snippet")
    p.add_argument("--base-model", default=None, metavar="ORG/NAME", help=_BASE_MODEL_HELP)
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser(
        "push",
        help="upload a run to the Hugging Face Hub in one commit",
        description="Upload the adapter, the model card, the figures and the barcode records "
        "to REPO_ID in one commit. Unchanged files are skipped; a failed push changes nothing. "
        "The token comes from --token, HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("run_dir")
    p.add_argument("--repo-id", required=True, help="user/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--token", default=None, help="Hub token (prefer HF_TOKEN or hf auth login)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--base-model", default=None, metavar="ORG/NAME", help=_BASE_MODEL_HELP)
    p.add_argument(
        "--private-base",
        action="store_true",
        help="publish although the base model has no Hub id: the card says the base model is "
        "private and has no runnable snippet",
    )
    p.set_defaults(func=_cmd_push)
    return parser


def _print_user_error(err: BaseException) -> None:
    text = " ".join(str(err).split())
    name = type(err).__name__
    # no break at hyphens or inside words: a command in the message (pip install
    # 'hf-tsprompt[viz]') must stay copyable
    wrapped = textwrap.fill(
        f"error ({name}): {text}", width=100, break_on_hyphens=False, break_long_words=False
    )
    print(wrapped, file=sys.stderr)


def _distributed_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-tsprompt`` and ``python -m hf_tsprompt``.

    Under ``torchrun`` / ``accelerate launch`` the command's job creates the process group;
    it is released here, after the command's trainer is gone, before the interpreter exits.
    Left alive, gloo's worker threads can abort the process during finalisation (SIGABRT:
    pytorch/pytorch#179291); destroyed in the wrong order (the trainer's DDP Reducer last), the
    exit can deadlock (:mod:`hf_tsprompt.distributed` says why). A group that existed before
    the call (a caller's own) is left alone.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    owned_group = not _distributed_initialized()
    try:
        load_plugins(args.plugin)
        code = int(args.func(args) or 0)
    except UserError as err:
        _print_user_error(err)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if owned_group and _distributed_initialized():
        from .distributed import release_process_groups

        if not release_process_groups():
            print("warning: a process group is still alive at exit", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
