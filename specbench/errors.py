"""User-fixable errors. The CLI prints ``str(err)`` on one line and exits non-zero (no traceback)."""

from __future__ import annotations


class SpecbenchError(Exception):
    """Base class: the message must name the problem and the fix."""

    exit_code = 2


class ConfigError(SpecbenchError):
    """A recipe, override or CLI option is invalid."""


class DataError(SpecbenchError):
    """A corpus, manifest or audio file is missing or malformed."""


class ModelError(SpecbenchError):
    """A checkpoint is missing, of the wrong kind, or incompatible."""


class DependencyError(SpecbenchError):
    """An optional package or system tool is not installed."""


class RunStateError(SpecbenchError):
    """An output directory holds results that this command must not overwrite."""


class WorkerError(SpecbenchError):
    """A sharded run finished with rows that failed on a worker (finished rows are saved; a rerun does the rest)."""

    exit_code = 1
