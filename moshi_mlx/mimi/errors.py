"""Exceptions raised by the Mimi codec.

Every error is one actionable sentence. Catch `MimiError` for all of them, or the standard base class
(`ValueError`, `FileNotFoundError`) a caller would expect for that kind of problem.
"""


class MimiError(Exception):
    """Base class of every error the Mimi codec raises on purpose."""


class MimiConfigError(MimiError, ValueError):
    """A Mimi config is malformed or asks for an option this implementation does not support."""


class MimiInputError(MimiError, ValueError):
    """Audio or codes handed to the codec have the wrong rank, dtype, length or range."""


class MimiLoadError(MimiError, ValueError):
    """A Mimi checkpoint could not be read or does not hold the expected tensors."""


class MimiFileNotFoundError(MimiLoadError, FileNotFoundError):
    """The Mimi checkpoint (or its folder) does not exist."""
