"""Shared fixtures: tiny offline models (see ``tiny.py``)."""

from __future__ import annotations

import pytest
import torch

from tiny import save_tiny_model, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return tiny_llama(vocab_size=len(tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
