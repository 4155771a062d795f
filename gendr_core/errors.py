"""Exception hierarchy of gendr_core.

Every error raised at the library boundary is a :class:`GenDRPixError` subclass (or a
``ValueError``/``FileNotFoundError`` subclass of it) whose message names the file, key or
value at fault and, where possible, the fix.
"""

from __future__ import annotations


class GenDRPixError(Exception):
    """Base class of all gendr_core errors."""


class ConfigError(GenDRPixError, ValueError):
    """A configuration value or JSON key is invalid."""


class CheckpointFormatError(GenDRPixError, ValueError):
    """A model file cannot be read: wrong format, kind, config or tensor shapes."""


class ImageInputError(GenDRPixError, ValueError):
    """An input image is empty, non-finite, or has an unsupported layout."""


class MissingDependencyError(GenDRPixError, ImportError):
    """An optional package needed for this feature is not installed."""


class MemoryBudgetError(GenDRPixError, MemoryError):
    """A job would need more memory than the machine has free; refused before it starts."""
