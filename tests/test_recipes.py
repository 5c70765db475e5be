"""Recipe loading and validation: everything a user can type in a recipe or with --set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_tsprompt.errors import ConfigError, MissingFileError
from hf_tsprompt.recipes import Recipe, load_recipe, parse_overrides, recipe_from_dict
from hf_tsprompt.trainer import TopologicalPromptConfig


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
    # The training section is the trainer's config, with what the other sections fix ...
    args = recipe.training
    assert isinstance(args, TopologicalPromptConfig)
    assert (args.learning_rate, args.max_steps, args.report_to) == (3e-2, 10, [])
    assert (args.seed, args.ts_weight, args.ts_tau) == (3, 2.0, 0.5)
    assert args.output_dir == str(recipe.run_dir)
    # ... and recipe.yaml records only the keys the recipe gave.
    given = {"learning_rate": 3e-2, "max_steps": 10, "report_to": "none"}
    assert recipe.to_dict()["training"] == given
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
    assert recipe.training.learning_rate == pytest.approx(0.03)
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
        ({"seed": 2**32}, "seed must be below 2"),
        # issue 18: values transformers / torch accepted here and refused after the model loaded
        ({"training": {"learning_rate": -1}}, r"training.learning_rate=-1.0 .* must be > 0"),
        ({"training": {"learning_rate": 0}}, r"training.learning_rate=0.0 .* must be > 0"),
        ({"training": {"learning_rate": float("nan")}}, "learning_rate=nan .* finite number"),
        # torch's own check, run on a dummy parameter: the key named, torch's reason
        ({"training": {"adam_beta2": 1}}, r"training.adam_beta2: Invalid beta parameter"),
        ({"training": {"per_device_train_batch_size": 0}}, "batch_size=0 .* must be >= 1"),
        ({"training": {"gradient_accumulation_steps": -1}}, "accumulation_steps=-1 .* >= 1"),
        ({"training": {"max_steps": 0}}, "max_steps=0 .* or -1 to train num_train_epochs"),
        ({"training": {"num_train_epochs": 0}}, "num_train_epochs=0.0 with max_steps -1"),
        # transformers' own checks (TrainingArguments, get_scheduler): the key and its reason
        ({"training": {"logging_steps": 0}}, "training.logging_steps: .*non-zero --logging"),
        (
            {"training": {"save_strategy": "steps", "save_steps": 2.5}},
            "training.save_steps: --save_steps must be an integer",
        ),
        ({"training": {"optim": "adamw"}}, "training.optim: adamw is not a valid OptimizerNames"),
        ({"training": {"lr_scheduler_type": "cosin"}}, "SchedulerType.*Did you mean 'cosine'"),
        (
            {"training": {"lr_scheduler_type": "warmup_stable_decay"}},
            "training.lr_scheduler_type: .*missing .*num_decay_steps",
        ),
        (
            {"training": {"lr_scheduler_kwargs": {"min_lr": 0}}},
            "training.lr_scheduler_kwargs: .*unexpected keyword argument 'min_lr'",
        ),
        ({"training": {"log_level": "loud"}}, "log_level='loud' .* debug, info"),
        ({"training": {"eval_strategy": "steps"}}, "must be 'no': .* without an evaluation"),
        ({"training": {"load_best_model_at_end": True}}, "load_best_model_at_end must be false"),
        ({"training": {"fp16": True, "bf16": True}}, "training.fp16: At most one of fp16 and"),
        ({"training": {"seed": 1}}, "top-level seed"),
        ({"training": {"push_to_hub": True}}, "hf-tsprompt push"),
        ({"training": {"resume_from_checkpoint": "x"}}, "pass --resume"),
        # issue 25: the base model's Hub id, for a local folder that names none
        ({"model": {"hub_id": "tinyllama"}}, "model.hub_id must be a Hub model id .*org/name"),
        ({"model": {"hub_id": "/abs/tinyllama"}}, "model.hub_id must be a Hub model id"),
        ({"training": {"report_to": 3}}, "training.report_to must be null or str or list"),
        ({"training": {"label_names": ["a", 1]}}, "training.label_names must be list or null"),
        (
            {"peft": {"method": "prefix_tuning"}, "training": {"gradient_checkpointing": True}},
            "gradient_checkpointing does not work with peft.method='prefix_tuning'",
        ),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, data, match):
    with pytest.raises((ConfigError, MissingFileError), match=match):
        load_recipe(_write(tmp_path, data))


@pytest.mark.parametrize(
    "data,match",
    [
        ({"task": "pairs"}, r"data.task='pairs' is not a registered task.*data.task: custom"),
        ({"task": "gsm8", "source": None}, "Did you mean 'gsm8k'"),
        ({"task": "custom"}, "data.source is required for task 'custom'"),
        ({"task": "custom", "source": "/no/such/rows.jsonl"}, "data.source: /no/such/rows.jsonl"),
        ({"task": "custom", "source": "rows.jsonl"}, "data.source: rows.jsonl does not exist"),
        ({"task": "custom", "source": "ROWS", "scorer": "fuzzy"}, "data.scorer='fuzzy'"),
        ({"task": "custom", "source": "ROWS", "scorer": "regex"}, "data.answer_pattern goes"),
        ({"task": "custom", "source": "ROWS", "columns": {"q": "x"}}, "data.columns.q"),
        ({"task": "custom", "source": "ROWS", "config": "x"}, "data.config 'x' names a config"),
        ({"task": "gsm8k", "scorer": "number"}, "data.scorer applies to task custom only"),
        ({"task": "bbh", "columns": {"prompt": "input"}}, "data.columns applies to task custom"),
        ({"task": "gsm8k", "test_split": "validation"}, "data.test_split applies to task custom"),
        ({"task": "bbh", "config": "no_such_task"}, r"unknown bbh config 'no_such_task' \(data"),
        ({"source": "/no/such/gsm8k"}, "data.source: /no/such/gsm8k does not exist"),
    ],
)
def test_bad_data_sections_name_the_key_in_yaml_spelling(tmp_path, data, match):
    rows = tmp_path / "rows.jsonl"
    data = {k: str(rows) if v == "ROWS" else v for k, v in data.items()}
    rows.write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path / "sub", {"data": data}))


def test_data_source_is_found_beside_the_recipe_then_in_the_working_directory(
    tmp_path, monkeypatch
):
    rows = '{"prompt": "a", "completion": "b"}\n'
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.jsonl").write_text(rows)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.jsonl").write_text(rows)
    (tmp_path / "work" / "other.jsonl").write_text(rows)
    monkeypatch.chdir(tmp_path / "work")
    path = _write(tmp_path / "recipes", {"data": {"task": "custom", "source": "mine.jsonl"}})
    assert load_recipe(path).data.source == str(tmp_path / "recipes" / "mine.jsonl")
    other = load_recipe(path, ["data.source=other.jsonl"]).data.source  # --set from the cwd
    assert other == str(tmp_path / "work" / "other.jsonl")
    hub = load_recipe(path, ["data.source=alice/rows"]).data
    assert (hub.task, hub.source) == ("custom", "alice/rows")  # a Hub id: looked at later


def test_a_finished_runs_recipe_loads_after_its_data_moved(tmp_path):
    raw = {"data": {"task": "custom", "source": str(tmp_path / "gone.jsonl")}}
    with pytest.raises(ConfigError, match="does not exist"):
        recipe_from_dict(raw, base_dir=tmp_path)
    recipe = recipe_from_dict(raw, base_dir=tmp_path, check_sources=False)  # push needs no data
    assert recipe.data.source == str(tmp_path / "gone.jsonl")


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


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_every_shipped_recipe_and_variant_is_valid():
    from hf_tsprompt.recipes import recipe_variants

    files = sorted(RECIPES.glob("*.yaml")) + sorted(RECIPES.glob("paper/[!_]*.yaml"))
    assert len(files) >= 34, "recipes/ lost recipes"
    for path in files:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        for variant in recipe_variants(path):
            assert load_recipe(path, variant=variant).name == f"{path.stem}-{variant}"


def test_paper_grid_has_the_papers_hyperparameters():
    grid = sorted(RECIPES.glob("paper/[!_]*.yaml"))
    models = {"gemma-2b-it", "open-llama-7b", "deepseek-7b-chat", "llama2-13b", "qwen1.5-14b"}
    expected = {
        f"{m}-{d}-{s}"
        for m in models
        for d in ("gsm8k", "mmlu-cf", "longbench")
        for s in ("single", "multi")
    }
    assert {p.stem for p in grid} == expected
    for path in grid:
        r = load_recipe(path)
        t = r.training
        assert (t.learning_rate, t.weight_decay, t.adam_epsilon) == (5e-5, 0.01, 1e-8)
        assert t.per_device_train_batch_size == 8 and t.num_train_epochs == 300
        assert t.lr_scheduler_type == "linear" and t.warmup_steps == 0.1
        assert (r.peft.init, r.peft.init_std) == ("normal", 0.02)
        assert (r.ts.weight, r.ts.beta_h0, r.ts.beta_h1) == (1.0, 1.0, 1.0)
        assert r.topology.every_n_epochs == 20 and r.data.test_size == 100
        assert r.data.train_size == (1 if path.stem.endswith("single") else 10)
    variants = {
        "soft-prompt": ("prompt_tuning", "none"),
        "l2": ("prompt_tuning", "l2"),
        "pdloss": ("prompt_tuning", "pdloss"),
        "prefix-tuning": ("prefix_tuning", "none"),
        "p-tuning-v2": ("p_tuning_v2", "none"),
    }
    for name, (method, reg) in variants.items():
        r = load_recipe(grid[0], variant=name)
        assert (r.peft.method, r.ts.regularizer) == (method, reg)
    assert load_recipe(grid[0], variant="act").evaluation.calibration == "act"
    assert load_recipe(grid[0], variant="dpc").evaluation.dpc is True


def test_accelerate_configs_are_valid():
    configs = {
        p.stem: yaml.safe_load(p.read_text()) for p in (RECIPES / "accelerate").glob("*.yaml")
    }
    assert set(configs) == {"single_gpu", "multi_gpu", "fsdp", "zero2", "zero3"}
    assert configs["fsdp"]["distributed_type"] == "FSDP"
    assert configs["fsdp"]["fsdp_config"]["fsdp_version"] == 2
    assert configs["zero3"]["deepspeed_config"]["zero_stage"] == 3
    assert configs["multi_gpu"]["distributed_type"] == "MULTI_GPU"


def test_base_chains_and_variant_errors(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "ts: {weight: 2.0}\nvariants: {ce: {ts: {regularizer: none}}}\n"
    )
    child = _write(tmp_path, {"base": "base.yaml", "ts": {"tau": 0.5}}, "child.yaml")
    r = load_recipe(child)
    assert (r.ts.weight, r.ts.tau, r.name) == (2.0, 0.5, "child")
    assert load_recipe(child, variant="ce").ts.regularizer == "none"
    with pytest.raises(ConfigError, match="no variant 'cee'.*Did you mean 'ce'"):
        load_recipe(child, variant="cee")
    loop = _write(tmp_path, {"base": "loop.yaml"}, "loop.yaml")
    with pytest.raises(ConfigError, match="base chain loops"):
        load_recipe(loop)


# --- issue 27: one schema (the training section is the trainer's config) ---------------------


@pytest.mark.parametrize(
    "training,match",
    [
        # TrainingArguments.__post_init__ refuses these: its own reason, the recipe key named.
        ({"lr_scheduler_type": "nope"}, r"^training.lr_scheduler_type: nope is not a valid Sch"),
        ({"logging_strategy": "often"}, r"^training.logging_strategy: often is not a valid Int"),
        ({"warmup_steps": -1}, r"^training.warmup_steps: .*warmup_steps >= 0"),
        ({"dataloader_prefetch_factor": 2}, r"^training.dataloader_prefetch_factor: "),
        # torch's optimizer, built on a dummy parameter: its reason, the key named.
        ({"adam_epsilon": -1}, r"^training.adam_epsilon: Invalid epsilon value: -1.0"),
    ],
)
def test_transformers_validates_the_training_section_before_any_model_loads(
    tmp_path, no_model_load, training, match
):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path, {"training": training}))


def test_an_unknown_training_key_gets_a_did_you_mean(tmp_path, no_model_load):
    with pytest.raises(ConfigError, match=r"unknown key training.warmup_step: .*'warmup_steps'"):
        load_recipe(_write(tmp_path, {"training": {"warmup_step": 10}}))


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("tau", 0.0, "{} must be > 0, got 0.0"),
        ("weight", -1.0, "{} must be >= 0, got -1.0"),
        ("variant", "exakt", "{} must be one of soft, exact, got 'exakt'. Did you mean 'exact'?"),
        ("regularizer", "tslos", "{}='tslos' is not a registered regulariser; choose one of"),
    ],
)
def test_a_ts_setting_gets_one_message_from_the_recipe_and_the_config(
    tmp_path, setting, value, message
):
    """One validator (regularizers.check_ts_settings): the same words, each in its spelling."""
    with pytest.raises(ConfigError) as from_recipe:
        load_recipe(_write(tmp_path, {"ts": {setting: value}}))
    with pytest.raises(ConfigError) as from_config:
        TopologicalPromptConfig(output_dir=str(tmp_path), use_cpu=True, **{f"ts_{setting}": value})
    assert str(from_recipe.value).startswith(message.format(f"ts.{setting}"))
    assert str(from_config.value).startswith(message.format(f"ts_{setting}"))
    assert str(from_recipe.value).replace(f"ts.{setting}", "") == str(from_config.value).replace(
        f"ts_{setting}", ""
    )


def test_the_saved_recipe_rebuilds_the_same_config(tmp_path):
    recipe = load_recipe(
        _write(tmp_path, {"training": {"learning_rate": 0.01, "lr_scheduler_type": "cosine"}})
    )
    again = recipe_from_dict(yaml.safe_load(recipe.to_yaml()), base_dir=tmp_path)
    assert again.to_dict()["training"] == {"learning_rate": 0.01, "lr_scheduler_type": "cosine"}
    assert again.training.to_dict() == recipe.training.to_dict()


def test_a_finished_runs_recipe_is_read_without_building_its_training_config(tmp_path):
    """A run's recipe may name what only the training machine had (tf32 needs an Ampere GPU):
    report / push read it without building the config; the pipeline builds it when needed."""
    from hf_tsprompt.pipeline import training_config

    raw = {"training": {"tf32": True, "learning_rate": 0.01}}
    recipe = recipe_from_dict(raw, base_dir=tmp_path, build_training=False)
    assert recipe.training is None and recipe.to_dict()["training"] == raw["training"]
    ok = recipe_from_dict({"training": {"learning_rate": 0.01}}, build_training=False)
    assert training_config(ok, tmp_path / "run").learning_rate == 0.01
    with pytest.raises(ConfigError, match="unknown key training.lerning_rate"):
        recipe_from_dict({"training": {"lerning_rate": 1}}, build_training=False)
