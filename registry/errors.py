"""Exceptions raised by the registry. Every message names the reference or path at fault."""

from __future__ import annotations

from pathlib import Path


class RegistryError(Exception):
    """Base class of every error the registry raises.

    `str(exc)` is for the person running the registry and may name a folder; `message` leaves out
    the `path` given apart, so a server can pass it to its clients."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message if path is None else f"{message} ({path})")
        self.message = message
        self.path = path


class BaseModelError(RegistryError):
    """A base model cannot be found, built or identified."""


class InvalidReferenceError(RegistryError):
    """A reference (`name`, `name@3`, `name:alias`) is malformed."""


class NotFoundError(RegistryError):
    """A name, version or alias does not exist in the registry."""


class IntegrityError(RegistryError):
    """Stored files do not match their manifest (tampering, truncation, missing or extra files)."""


class InvalidAdapterError(RegistryError):
    """An adapter folder is not a valid safetensors LoRA adapter."""


class ConflictError(RegistryError):
    """The operation would break an invariant (alias in use, route points at a version, ...)."""


class StorageError(RegistryError):
    """The catalog or evidence database cannot be read or written (locked, read-only, disk full, gone)."""


class UnavailableError(StorageError):
    """The catalog database cannot be reached right now; retry later (servers answer 503)."""
