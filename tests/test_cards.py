"""The run summaries and the card (``hf_tsprompt.cards``): one builder, read by the card and the
HTML report alike, whose metric rows come from the metric registry when they are built, so a
metric that a plugin registers reaches both (issue 27 items 2 and 3)."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser

import pytest
import yaml

from hf_tsprompt import metrics
from hf_tsprompt.cli import main
from hf_tsprompt.errors import ConfigError
from hf_tsprompt.metrics import Metric, format_value, register_metric, table_keys

from tiny import save_tiny_hub_model, write_tiny_gsm8k


def test_table_keys_ask_the_registry_when_called():
    assert table_keys("topology") == metrics.SUMMARY_TABLE_KEYS
    assert table_keys("evolution") == metrics.EVOLUTION_TABLE_KEYS
    assert table_keys("results") == ("accuracy_before", "accuracy_after")
    assert table_keys("training") == ()
    key = "test_cards_late_metric"
    register_metric(Metric(key, "a metric registered late", "m", tables=("topology",)))
    try:
        assert table_keys("topology") == (*metrics.SUMMARY_TABLE_KEYS, key)
    finally:
        metrics._VOCABULARY.pop(key)
    with pytest.raises(ConfigError, match="tables must be"):
        register_metric(Metric("test_cards_bad", "bad tables", "b", tables=("cards",)))
    with pytest.raises(ConfigError, match="tables must be"):
        register_metric(Metric("test_cards_str", "a string", "s", tables="training"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown table"):
        table_keys("figures")


# --- a plugin's metric reaches the card and the report, through `--plugin` -------------------

_PLUGIN = """
from hf_tsprompt import register_regularizer
from hf_tsprompt.metrics import Metric, register_metric

register_metric(Metric("{key}", "{label}", "sd(|p_i|)", tables=("training",)))


@register_regularizer("{reg}", help="row norms pulled together")
def spread(P):
    norms = P.float().norm(dim=1)
    return norms.var(), {{"{key}": float(norms.detach().std())}}
"""


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []

    def handle_data(self, data: str) -> None:
        self.cells.append(data)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``<name>.py`` in the current directory (``tmp_path``): registers regulariser
    ``<name>_reg``, which logs ``<name>_spread``, and metric ``<name>_spread`` for the
    ``training`` table. Everything it registers is removed afterwards."""
    from hf_tsprompt.regularizers import list_regularizers, unregister_regularizer

    name = f"cardplug_{tmp_path.name.replace('-', '_').lower()}"
    key, label = f"{name}_spread", f"row norm spread ({name})"
    (tmp_path / f"{name}.py").write_text(_PLUGIN.format(key=key, label=label, reg=f"{name}_reg"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # --plugin puts the cwd first: undo it

    def forget() -> None:  # as a new `hf-tsprompt` process would start
        metrics._VOCABULARY.pop(key, None)
        if f"{name}_reg" in list_regularizers():
            unregister_regularizer(f"{name}_reg")
        sys.modules.pop(name, None)

    yield name, key, label, forget
    forget()


def test_a_plugin_metric_reaches_the_card_and_the_report(tmp_path, plugin):
    name, key, label, forget = plugin
    model_dir = save_tiny_hub_model(tmp_path / "model")
    data_dir = write_tiny_gsm8k(tmp_path / "data")
    recipe = {
        "name": "plugged",
        "model": {"name_or_path": str(model_dir)},
        "data": {"task": "gsm8k", "source": str(data_dir), "train_size": 4, "test_size": 4},
        "peft": {"num_virtual_tokens": 5},
        "ts": {"regularizer": f"{name}_reg", "weight": 0.5},
        "topology": {"every_n_steps": 2, "evaluate": "none"},
        "training": {"max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 1},
        "evaluation": {"batch_size": 4, "max_new_tokens": 4},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    assert main(["--plugin", name, "train", "recipe.yaml", "--quiet"]) == 0
    run = tmp_path / "runs" / "plugged"
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    logged = [h[key] for h in history if key in h]
    assert len(logged) == 4  # the regulariser's term, logged at each step
    first, last = format_value(key, logged[0]), format_value(key, logged[-1])

    card = (run / "README.md").read_text()
    assert f"| {label} | {first} | {last} |" in card
    assert "| logged metric | first (step 1) | last (step 4) |" in card

    forget()  # the report runs in a new process: only --plugin brings the metric back
    out = tmp_path / "report.html"
    assert main(["--plugin", name, "report", str(run), "--out", str(out)]) == 0
    parser = _Cells()
    parser.feed(out.read_text())
    i = parser.cells.index(label)
    assert parser.cells[i + 1 : i + 3] == [first, last]
    # The card's settings table is the report's too.
    assert f"| regulariser | {name}_reg |" in card
    i = parser.cells.index("Training settings")
    assert parser.cells[parser.cells.index("regulariser", i) + 1] == f"{name}_reg"

    # Without the plugin the metric is unknown: neither prints a row for it.
    forget()
    assert main(["card", str(run)]) == 0
    assert label not in (run / "README.md").read_text()


# --- the Trainer writes its card the TRL way ---------------------------------------------------


def test_the_trainer_writes_its_card_with_create_model_card(tmp_path, tokenizer):
    """``create_model_card`` (what ``Trainer.push_to_hub`` calls, and TRL's trainers override)
    renders the same card into ``output_dir`` from the packaged template: the adapter it saves
    there, the trainer's ``ts_*`` settings, the topology the callback recorded."""
    from huggingface_hub import ModelCard
    from transformers import DataCollatorForSeq2Seq

    from hf_tsprompt.callbacks import PersistenceCallback
    from hf_tsprompt.prompts import get_prompt_model
    from hf_tsprompt.trainer import TopologicalPromptConfig, TopologicalPromptTrainer

    from tiny import TINY_HUB_ID, tiny_llama, tiny_lm_dataset

    model = get_prompt_model(tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=5)
    out = tmp_path / "out"
    args = TopologicalPromptConfig(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        ts_regularizer="l2",
    )
    trainer = TopologicalPromptTrainer(
        model=model,
        args=args,
        train_dataset=tiny_lm_dataset(tokenizer),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        callbacks=[PersistenceCallback(every_n_steps=1)],
    )
    trainer.train()
    trainer.create_model_card(finetuned_from=TINY_HUB_ID)
    card = (out / "README.md").read_text()
    assert ModelCard(card).data.base_model == TINY_HUB_ID
    assert (
        "| regulariser | l2 |" in card
        and ", l2 regulariser)" in card.splitlines()[card.splitlines().index("---", 1) + 2]
    )
    assert "## Topology of the prompt" in card and "| H1 count (loops) |" in card
    assert (out / "adapter" / "adapter_config.json").is_file()  # saved for the card to read


def test_the_trl_variant_writes_the_same_card_at_its_checkpoints(tmp_path, tokenizer):
    """TRL's SFTTrainer calls ``create_model_card`` at every checkpoint: the TRL variant's is
    the same card builder's, not TRL's generic card."""
    from datasets import Dataset

    from hf_tsprompt.prompts import get_prompt_model
    from hf_tsprompt.sft import TopologicalSFTConfig, TopologicalSFTTrainer

    from tiny import tiny_llama

    model = get_prompt_model(tiny_llama(len(tokenizer)), "prompt_tuning", num_virtual_tokens=4)
    data = Dataset.from_list(
        [{"prompt": f"What is {i} + {i}?", "completion": f" {2 * i}"} for i in range(4)]
    )
    args = TopologicalSFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        gradient_checkpointing=False,
    )
    trainer = TopologicalSFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- hf-tsprompt" in card and "| regulariser | tsloss |" in card
    assert "## Topology of the prompt" in card
