"""Model card templates, installed as ``hf_tsprompt.model_cards`` (see pyproject.toml).

This folder stays at the top of the repository; setuptools maps it into the package, and
``hf_tsprompt.cards`` reads the template with ``importlib.resources``. The ``__init__.py`` makes
it a regular package: setuptools' editable installs cannot map a namespace package nested in
a regular one, so without it ``pip install -e .`` would not find the template as package data.
"""
