"""Errors a user can fix; the CLI prints them as one line instead of a traceback."""


class WorkbenchError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(WorkbenchError, ValueError):
    """A config value is out of range or inconsistent; the message names the field and the fix."""


class ModelError(WorkbenchError, ValueError):
    """Unknown model, hook or vocabulary; the message says what exists instead."""


class RunError(WorkbenchError, RuntimeError):
    """A run directory is missing, corrupt or of the wrong kind."""


class CacheError(WorkbenchError, RuntimeError):
    """An activation cache is missing, truncated or corrupt; the message names the file."""


class WriteError(WorkbenchError, OSError):
    """A file could not be written (read-only or missing directory, a file in the way, disk full); names the path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


USER_ERRORS = (WorkbenchError, FileNotFoundError, FloatingPointError)
