"""Recipe loading and validation: everything a user can type in a recipe or with --set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_tsprompt.errors import ConfigError, MissingFileError
from hf_tsprompt.recipes import Recipe, load_recipe, parse_overrides, recipe_from_dict


def _write(tmp_path: Path, data, name="r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_and_name_from_file_stem(tmp_path):
    recipe = load_recipe(_write(tmp_path, {}, "my-run.yaml"))
    assert isinstance(recipe, Recipe)
    assert recipe.name == "my-run"
    assert recipe.run_dir == Path("runs/my-run")
    assert recipe.peft.init == "normal" and recipe.peft.init_std == 0.02
    assert recipe.ts.regularizer == "tsloss" and recipe.ts.weight == 1.0
    assert recipe.data.train_size == 10 and recipe.data.test_size == 100


def test_sections_and_training_arguments(tmp_path):
    path = _write(
        tmp_path,
        {
            "name": "x",
            "seed": 3,
            "ts": {"weight": 2, "tau": 0.5},
            "training": {"learning_rate": 3e-2, "max_steps": 10, "report_to": "none"},
        },
    )
    recipe = load_recipe(path)
    assert recipe.ts.weight == 2.0 and isinstance(recipe.ts.weight, float)
    assert recipe.training == {"learning_rate": 3e-2, "max_steps": 10, "report_to": "none"}
    assert recipe.seed == 3
    round_trip = recipe_from_dict(yaml.safe_load(recipe.to_yaml()), base_dir=tmp_path)
    assert round_trip.to_dict() == recipe.to_dict()


def test_overrides_parse_yaml_values(tmp_path):
    path = _write(tmp_path, {"ts": {"weight": 1.0}})
    recipe = load_recipe(
        path,
        ["ts.weight=0", "training.learning_rate=3e-2", "ts.regularizer=l2", "data.config=null"],
    )
    assert recipe.ts.weight == 0.0 and recipe.ts.regularizer == "l2"
    assert recipe.training["learning_rate"] == pytest.approx(0.03)
    assert recipe.data.config is None
    assert parse_overrides(["a.b.c=1", "a.b.d=x"]) == {"a": {"b": {"c": 1, "d": "x"}}}


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    data = tmp_path / "shared" / "data" / "gsm8k"
    data.mkdir(parents=True)
    recipes = tmp_path / "repo" / "recipes"
    recipes.mkdir(parents=True)
    path = _write(recipes, {"data": {"source": "../../shared/data/gsm8k"}})
    monkeypatch.chdir(tmp_path / "repo")
    recipe = load_recipe(path)
    assert Path(recipe.data.source) == data.resolve()
    hub = load_recipe(_write(recipes, {"data": {"source": "openai/gsm8k"}}, "h.yaml"))
    assert hub.data.source == "openai/gsm8k"


@pytest.mark.parametrize(
    "data,match",
    [
        ({"modle": {}}, "unknown top-level key 'modle'.*Did you mean 'model'"),
        ({"ts": {"wieght": 1}}, r"unknown key ts.wieght.*Did you mean 'weight'"),
        ({"training": {"learning_rte": 1}}, r"unknown key training.learning_rte.*learning_rate"),
        ({"training": {"ts_weight": 1}}, r"belong in the 'ts' section \(ts.weight\)"),
        ({"training": {"output_dir": "x"}}, "top-level output_dir"),
        ({"ts": {"weight": "high"}}, r"ts.weight must be float, got 'high'"),
        ({"peft": {"num_virtual_tokens": 2.5}}, "peft.num_virtual_tokens must be int"),
        ({"peft": {"num_virtual_tokens": 2}}, "must be >= 3"),
        ({"evaluation": {"before": "yes"}}, "evaluation.before must be bool"),
        ({"training": {"max_steps": "ten"}}, "training.max_steps must be int"),
        ({"peft": {"method": "lora"}}, "peft.method='lora' is not allowed"),
        ({"ts": {"tau": 0}}, "ts.tau must be > 0"),
        ({"ts": {"weight": -1}}, "ts.weight must be >= 0"),
        ({"topology": {"evaluate": "sometimes"}}, "topology.evaluate='sometimes'"),
        ({"data": "gsm8k"}, "section 'data' must be a mapping"),
        ({"name": "a/b"}, "plain run name"),
        ({"data": {"source": "./missing/data.jsonl"}}, "does not exist"),
        ({"peft": {"init": "text"}}, "init_text is empty"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, data, match):
    with pytest.raises((ConfigError, MissingFileError), match=match):
        load_recipe(_write(tmp_path, data))


@pytest.mark.parametrize(
    "text,match",
    [
        ("model: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_malformed_yaml(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path, text))


def test_missing_recipe_and_bad_overrides(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    path = _write(tmp_path, {})
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_recipe(path, ["ts.weight"])
    with pytest.raises(ConfigError, match="unknown key ts.bogus"):
        load_recipe(path, ["ts.bogus=1"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path, ["ts.weight=[1"])


def test_every_shipped_recipe_is_valid():
    root = Path(__file__).resolve().parents[1] / "recipes"
    files = sorted(root.glob("*.yaml"))
    assert files, "recipes/ has no recipes"
    for path in files:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
