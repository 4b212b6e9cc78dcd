"""The project's own errors: each says what is wrong, where (file, key or record) and what was expected.

A :class:`CadaError` is user-fixable: the entry points print it without a traceback (:mod:`utils.cli`).
"""
from __future__ import annotations


class CadaError(Exception):
    """Base class: a user-fixable problem with an input, a file or the run folder."""


class ConfigError(CadaError, ValueError):
    """A config file, key or override that does not fit the schema."""


class DataError(CadaError, ValueError):
    """An annotation file, record, image or caption that cannot be used as it is."""


class CheckpointError(CadaError, ValueError):
    """A checkpoint file that cannot be read, or does not fit the model."""


class RunFolderError(CadaError, RuntimeError):
    """An output folder that belongs to another run, is locked, or is already finished."""


class TrainingError(CadaError, RuntimeError):
    """Training cannot go on (a non-finite loss, a failed save); the last good checkpoint is kept."""
