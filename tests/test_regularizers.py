"""The regulariser registry (``hf_tsprompt/regularizers.py``): the built-ins, the declarations
every config reads, and a regulariser registered from outside the package, trained through
a recipe with no library edit."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from hf_tsprompt import Param, get_regularizer, list_regularizers, register_regularizer
from hf_tsprompt.errors import ConfigError
from hf_tsprompt.hyperparams import TSLOSS_PARAMS
from hf_tsprompt.losses import l2_loss, pairwise_distance_loss, ts_loss
from hf_tsprompt.recipes import TSSection, load_recipe, recipe_from_dict
from hf_tsprompt.regularizers import FIELD_PARAMS, WEIGHT, unregister_regularizer
from hf_tsprompt.trainer import TopologicalPromptConfig, TSArguments

from tiny import save_tiny_hub_model, tiny_recipe, write_tiny_gsm8k

# --- built-ins ------------------------------------------------------------------------------


def test_builtins_compute_what_the_losses_compute():
    assert list_regularizers()[:4] == ("tsloss", "l2", "pdloss", "none")
    P = torch.randn(7, 5)
    loss, parts = get_regularizer("tsloss")(P, tau=0.2, scale="mean")
    out = ts_loss(P, tau=0.2, alpha=10.0, scale="mean")
    assert torch.equal(loss, out.total)
    assert parts == {
        "ts_h0": pytest.approx(out.h0.item()),
        "ts_h1": pytest.approx(out.h1.item()),
        "ts_delta": pytest.approx(out.delta.item()),
        "ts_zeta": pytest.approx(out.zeta.item()),
    }
    assert torch.equal(get_regularizer("l2")(P)[0], l2_loss(P))
    assert torch.equal(get_regularizer("pdloss")(P)[0], pairwise_distance_loss(P))
    none = get_regularizer("none")
    zero, parts = none(P)
    assert not none.active and zero.item() == 0.0 and parts == {}
    assert all(get_regularizer(n).active for n in ("tsloss", "l2", "pdloss"))


def test_every_config_reads_the_declarations():
    """TSArguments' ts_* fields and the recipe's ts keys are the declared ones, with the
    declared defaults; the built-in parameters are TSLoss's (the fields users know)."""
    assert FIELD_PARAMS == TSLOSS_PARAMS
    declared = {"weight": WEIGHT, **{p.name: p for p in FIELD_PARAMS}}
    args = {f.name: f for f in fields(TSArguments)}
    assert list(args) == [
        "ts_regularizer",
        *(f"ts_{name}" for name in declared),
        "ts_params",
        "ts_adapter",
    ]
    section = {f.name: f for f in fields(TSSection)}
    assert list(section) == ["regularizer", *declared, "params"]
    for name, p in declared.items():
        assert args[f"ts_{name}"].default == section[name].default == p.default
        assert args[f"ts_{name}"].metadata["help"] == p.description
    assert args["ts_tau"].metadata["help"] == (
        "[tau] Temperature of the soft nearest-neighbour distance (Eq. 1)."
    )
    assert args["ts_regularizer"].metadata["help"] == (
        "Regulariser on the soft prompt: 'tsloss' (the paper, Eq. 6), 'l2' (+L2-Reg baseline), "
        "'pdloss' (+PDLoss baseline) or 'none' (plain cross-entropy)."
    )


def test_hf_argument_parser_reads_the_generated_fields(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(TopologicalPromptConfig).parse_args_into_dataclasses(
        [
            *("--output_dir", str(tmp_path), "--use_cpu", "true", "--ts_tau", "0.3"),
            *("--ts_variant", "exact", "--ts_regularizer", "l2", "--ts_weight", "2"),
        ]
    )
    assert (args.ts_tau, args.ts_variant, args.ts_regularizer, args.ts_weight) == (
        0.3,
        "exact",
        "l2",
        2.0,
    )
    assert args.ts_scale == "absolute" and args.ts_params is None


# --- a regulariser registered from outside the package --------------------------------------

CALLS: list[dict] = []


def spread(P: torch.Tensor, *, gamma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pull every prompt row to norm gamma."""
    norms = P.float().norm(dim=1)
    loss = ((norms - gamma) ** 2).mean()
    CALLS.append({"gamma": gamma, "loss": float(loss.detach())})
    return loss, {"spread_norm": norms.mean()}


@pytest.fixture
def registered():
    CALLS.clear()
    register_regularizer(
        "spread",
        params=[Param("gamma", 1.0, "Target row norm.", symbol="gamma", bound="> 0")],
        help="rows pulled to norm gamma",
    )(spread)
    yield get_regularizer("spread")
    unregister_regularizer("spread")


def test_a_registered_regulariser_trains_from_a_recipe(registered, tmp_path):
    from hf_tsprompt.pipeline import train_from_recipe

    raw = tiny_recipe(
        save_tiny_hub_model(tmp_path / "model"),
        write_tiny_gsm8k(tmp_path / "data"),
        output_dir=str(tmp_path / "run"),
        ts={"regularizer": "spread", "weight": 0.5, "params": {"gamma": 0.3}},
        training={"logging_steps": 1},
        evaluation={"before": False, "after": False},
    )
    path = tmp_path / "spread.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path)
    assert recipe.ts.params == {"gamma": 0.3}
    result = train_from_recipe(recipe, progress=False, log=lambda _m: None)

    assert result.global_step == 4
    assert len(CALLS) == 4 and all(c["gamma"] == 0.3 for c in CALLS)
    state = json.loads((result.run_dir / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss_ts" in h]
    assert [h["loss_ts"] for h in logs] == pytest.approx([c["loss"] for c in CALLS])
    assert all("spread_norm" in h and "ts_h0" not in h for h in logs)
    # The loss is lambda_ts * L_reg over the CE.
    total = logs[0]["loss_ce"] + 0.5 * logs[0]["loss_ts"]
    assert logs[0]["loss"] == pytest.approx(total, rel=1e-4, abs=1e-4)
    saved = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
    assert saved["ts"]["regularizer"] == "spread" and saved["ts"]["params"] == {"gamma": 0.3}
    card = (result.run_dir / "README.md").read_text()
    assert "| regulariser | spread |" in card and "| ts_params.gamma | 0.3 |" in card


def test_a_registered_regulariser_in_python(registered, tmp_path):
    args = TopologicalPromptConfig(
        output_dir=str(tmp_path), use_cpu=True, ts_regularizer="spread", ts_params='{"gamma": 2}'
    )
    assert args.ts_params == {"gamma": 2} and args.ts_regularizer_params() == {"gamma": 2.0}
    default = TopologicalPromptConfig(
        output_dir=str(tmp_path), use_cpu=True, ts_regularizer="spread"
    )
    assert default.ts_regularizer_params() == {"gamma": 1.0}
    assert "spread" in list_regularizers() and registered.help == "rows pulled to norm gamma"


# --- bad input ------------------------------------------------------------------------------


def test_unknown_names():
    with pytest.raises(ConfigError, match=r"regulariser 'tslos' is unknown.*Did you mean 'tsloss'"):
        get_regularizer("tslos")
    with pytest.raises(ConfigError, match=r"ts.regularizer='spread' is not a registered.*register"):
        recipe_from_dict({"ts": {"regularizer": "spread"}})
    with pytest.raises(ConfigError, match="ts_regularizer='spread' is not a registered"):
        TopologicalPromptConfig(output_dir="unused", use_cpu=True, ts_regularizer="spread")
    with pytest.raises(ConfigError, match="'spread' is unknown"):
        unregister_regularizer("spread")


def test_duplicate_and_invalid_registrations(registered):
    with pytest.raises(ConfigError, match="'spread' is already registered.*replace=True"):
        register_regularizer("spread", spread, params=registered.params)
    with pytest.raises(ConfigError, match="'tsloss' is already registered \\(a built-in\\)"):
        register_regularizer("tsloss", spread, replace=True)
    with pytest.raises(ConfigError, match="'l2' is a built-in"):
        unregister_regularizer("l2")
    replaced = register_regularizer("spread", spread, params=registered.params, replace=True)
    assert replaced.fn is spread
    with pytest.raises(ConfigError, match="is an identifier"):
        register_regularizer("my reg", spread)
    with pytest.raises(ConfigError, match="declares parameter 'gamma' twice"):
        register_regularizer("twice", spread, params=[Param("gamma", 1.0)] * 2)
    with pytest.raises(ConfigError, match="'weight' is taken by ts.weight"):
        register_regularizer("w", lambda P, *, weight: P.sum(), params=[Param("weight", 1.0)])
    with pytest.raises(ConfigError, match="would shadow the built-in field ts_tau"):
        register_regularizer("t", lambda P, *, tau: P.sum(), params=[Param("tau", 5.0)])
    with pytest.raises(ConfigError, match=r"cannot be called as fn\(P, gamma=\)"):
        register_regularizer("sig", lambda P: P.sum(), params=[Param("gamma", 1.0)])
    with pytest.raises(ConfigError, match="Param declarations"):
        register_regularizer("raw", spread, params=[{"name": "gamma"}])  # type: ignore[list-item]
    assert not {"my reg", "twice", "w", "t", "sig", "raw"} & set(list_regularizers())
    # Reusing a built-in's declaration is allowed: its field then feeds both.
    tau = get_regularizer("tsloss").param("tau")
    reuse = register_regularizer("reuse", lambda P, *, tau: P.sum() * tau, params=[tau])
    try:
        args = TopologicalPromptConfig(
            output_dir="unused", use_cpu=True, ts_regularizer="reuse", ts_tau=0.7
        )
        assert args.ts_regularizer_params() == {"tau": 0.7} and reuse.params == (tau,)
    finally:
        unregister_regularizer("reuse")


@pytest.mark.parametrize(
    "ts,match",
    [
        ({"params": {"gamma": "wide"}}, r"ts.params.gamma must be a finite number, got 'wide'"),
        ({"params": {"gamma": -1}}, r"ts.params.gamma must be > 0, got -1"),
        ({"params": {"gama": 1}}, r"unknown parameter ts.params.gama .*Did you mean 'gamma'"),
        ({"params": {"tau": 1}}, r"ts.params.tau: tau has a setting of its own; set ts.tau"),
        ({"gamma": 1}, r"unknown key ts.gamma .*parameter of regulariser 'spread'.*ts.params"),
        ({"params": [1]}, r"ts.params must be dict"),
    ],
)
def test_bad_parameters_in_a_recipe(registered, ts, match):
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict({"ts": {"regularizer": "spread", **ts}})


@pytest.mark.parametrize(
    "params,match",
    [
        ({"gamma": "wide"}, r"ts_params\['gamma'\] must be a finite number, got 'wide'"),
        ({"gamma": 0}, r"ts_params\['gamma'\] must be > 0, got 0"),
        ({"gama": 1}, r"unknown parameter ts_params\['gama'\] .*Did you mean 'gamma'"),
        ({"tau": 1}, r"ts_params\['tau'\]: tau has a setting of its own; set ts_tau"),
        ("{gamma: 1}", r"ts_params='\{gamma: 1\}' is not valid JSON"),
        ("[1]", "ts_params must be a JSON object"),
    ],
)
def test_bad_parameters_in_a_config(registered, tmp_path, params, match):
    with pytest.raises(ConfigError, match=match):
        TopologicalPromptConfig(
            output_dir=str(tmp_path), use_cpu=True, ts_regularizer="spread", ts_params=params
        )


def test_bad_parameters_in_a_call(registered):
    P = torch.randn(4, 3)
    with pytest.raises(ConfigError, match=r"unknown parameter 'gama' of regulariser 'spread'"):
        registered(P, gama=1.0)
    with pytest.raises(ConfigError, match="gamma must be > 0, got -2"):
        registered(P, gamma=-2)
    with pytest.raises(ConfigError, match="its parameters: beta_h0, beta_h1, tau"):
        get_regularizer("tsloss").param("gamma")
    bad = register_regularizer("vector", lambda P: P.sum(dim=0))
    try:
        with pytest.raises(ConfigError, match="must return a 0-d tensor"):
            bad(P)
    finally:
        unregister_regularizer("vector")


def test_recipe_round_trip_keeps_params(registered, tmp_path):
    recipe = recipe_from_dict({"ts": {"regularizer": "spread", "params": {"gamma": 2}}})
    assert recipe.ts.params == {"gamma": 2.0} and isinstance(recipe.ts.params["gamma"], float)
    assert recipe.ts.ts_arguments()["ts_params"] == {"gamma": 2.0}
    again = recipe_from_dict(yaml.safe_load(recipe.to_yaml()), base_dir=Path(tmp_path))
    assert again.ts == recipe.ts
    # A built-in regulariser's recipe is saved as before: no empty params key.
    assert "params" not in recipe_from_dict({}).to_dict()["ts"]
