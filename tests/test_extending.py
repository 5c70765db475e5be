"""The README's "Extending it", each promise kept by code written outside the package.

Every extension here is a module written into the test's own folder (as a user's would be)
and reached only through what the README names: ``hf-tsprompt --plugin MODULE`` in a fresh
process (so nothing registered leaks into other tests), or the public API. The README's
promises and where each is tested:

- regularisers: ``test_cli.py::test_a_plugin_regulariser_is_selected_and_trained_from_the_cli``
  (and plugins installed by entry point: ``test_installed_plugins_are_found_by_entry_point``);
- tasks: ``test_own_data.py`` (a plugin task in the working directory);
- prompt methods: :func:`test_a_prompt_method_from_a_plugin_trains_and_is_read_everywhere`;
- training (``trainer_cls``, ``MetricSource``): :func:`test_a_trainer_subclass_and_a_metric_source`;
- metrics: ``test_cards.py::test_a_plugin_metric_reaches_the_card_and_the_report``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from hf_tsprompt import load_recipe, train_from_recipe
from hf_tsprompt.errors import ConfigError

from procs import run_process
from tiny import save_tiny_model, tiny_recipe, write_tiny_gsm8k

#: peft's CARTRIDGE (a trained key/value prefix, Eyuboglu et al., 2025) is a prompt-learning
#: method hf_tsprompt does not register; this plugin adds it the way the README says.
CARTRIDGE_PLUGIN = '''
"""Cartridges as an hf_tsprompt prompt method."""
from peft import CartridgeConfig

from hf_tsprompt import PromptMethod, register_prompt_method


def build_config(common, **_):
    return CartridgeConfig(num_frozen_tokens=0, **common)


def read_matrix(encoder, config):
    return encoder.weight  # num_virtual_tokens x (2 * layers * head_dim * kv_heads)


register_prompt_method(
    PromptMethod(
        name="cartridge",
        peft_type="CARTRIDGE",
        build_config=build_config,
        read_matrix=read_matrix,
        in_vocabulary_space=False,
        kv_cache=True,
        card_label="Cartridges (Eyuboglu et al., 2025)",
        card_tag="cartridges",
        supports_gradient_checkpointing=False,
    )
)
'''


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending")
    return save_tiny_model(root / "model"), write_tiny_gsm8k(root / "data")


def test_a_prompt_method_from_a_plugin_trains_and_is_read_everywhere(assets, tmp_path):
    model_dir, data_dir = assets
    (tmp_path / "my_cartridge.py").write_text(CARTRIDGE_PLUGIN)
    raw = tiny_recipe(model_dir, data_dir, name="cart", peft={"method": "cartridge"})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "hf_tsprompt"]

    refused = run_process(
        [*cli, "train", "recipe.yaml", "--dry-run"],
        cwd=tmp_path, timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2 and "cartridge" in refused.stderr  # unknown without it
    done = run_process(
        [*cli, "--plugin", "my_cartridge", "train", "recipe.yaml", "--quiet"],
        cwd=tmp_path, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / "cart"
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "CARTRIDGE"
    # The prompt matrix the callback recorded is the cartridge's own key/value table.
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    (table,) = saved.values()
    n_layers = 2  # tests/tiny.py's model
    assert table.shape[0] == 6 and table.shape[1] % (2 * n_layers) == 0
    records = [json.loads(line) for line in (run / "topology" / "records.jsonl").open()]
    assert [r["step"] for r in records] == [0, 2, 4]
    card = (run / "README.md").read_text()
    assert "Cartridges (Eyuboglu et al., 2025)" in card and "- cartridges" in card


TRAINING_PLUGIN = '''
"""A Trainer subclass and a callback that hands metrics to the log."""
from transformers import TrainerCallback

from hf_tsprompt import TopologicalPromptTrainer

LOSS_CALLS = []


class CountingTrainer(TopologicalPromptTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        LOSS_CALLS.append(self.state.global_step)
        return super().compute_loss(model, inputs, *args, **kwargs)


class StepCounter(TrainerCallback):
    """A MetricSource: what pop_pending_logs returns is logged with the trainer's metrics."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def pop_pending_logs(self):
        return {"mine/steps_seen": float(self.steps)}
'''


def test_a_trainer_subclass_and_a_metric_source(assets, tmp_path, monkeypatch):
    from hf_tsprompt import MetricSource

    model_dir, data_dir = assets
    (tmp_path / "my_training.py").write_text(textwrap.dedent(TRAINING_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import my_training  # the user's module, outside the package

    try:
        raw = tiny_recipe(model_dir, data_dir, name="sub", output_dir=str(tmp_path / "run"))
        raw["training"]["logging_steps"] = 1
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
        recipe = load_recipe(tmp_path / "recipe.yaml")
        counter = my_training.StepCounter()
        assert isinstance(counter, MetricSource)
        result = train_from_recipe(
            recipe,
            trainer_cls=my_training.CountingTrainer,
            extra_callbacks=[counter],
            progress=False,
            log=lambda *_: None,
        )
        assert result.global_step == 4 and len(my_training.LOSS_CALLS) == 4
        state = json.loads((Path(result.run_dir) / "trainer_state.json").read_text())
        steps = [h for h in state["log_history"] if "loss_ce" in h]  # the per-step logs
        assert [h.get("mine/steps_seen") for h in steps] == [1.0, 2.0, 3.0, 4.0]

        from transformers import Trainer

        with pytest.raises(ConfigError, match="trainer_cls must be a Trainer class"):
            train_from_recipe(recipe, trainer_cls=Trainer, overwrite=True)
    finally:
        sys.modules.pop("my_training", None)
