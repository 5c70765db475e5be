"""Exceptions that mean "the user asked for something that cannot work".

Each one subclasses the builtin a Python caller would expect (``ValueError``,
``FileNotFoundError``, ``ImportError``, ``RuntimeError``) *and* :class:`UserError`, so the
CLI can print the message as one paragraph without a traceback while library users keep
catching the usual builtins. Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "HubError",
    "MissingDependencyError",
    "MissingFileError",
    "RunFolderError",
    "UserError",
]


class UserError(Exception):
    """Base class: an error caused by input the user controls (recipe, paths, arguments)."""


class ConfigError(UserError, ValueError):
    """A recipe, config field or argument has a wrong value, type or name."""


class DataError(UserError, ValueError):
    """A dataset row or file is malformed (the message names the file and row)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingDependencyError(UserError, ImportError):
    """An optional package is not installed (the message gives the exact install command)."""


class RunFolderError(UserError, RuntimeError):
    """A run folder is missing pieces, or is in use by another job."""


class HubError(UserError, RuntimeError):
    """A Hub operation failed (auth, network, server); nothing was left half-done."""
