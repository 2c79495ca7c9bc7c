"""Errors that tell the user exactly what is wrong (file, field, value), never a deep traceback."""

from __future__ import annotations

from pathlib import Path


class HybridRayError(Exception):
    """Base class: the CLI prints these as one clean line and exits non-zero."""


class DataError(HybridRayError, ValueError):
    """Bad input data. Names the file, the field/line and the offending value."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        field: str | None = None,
        value: object = None,
        line: int | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        self.value = value
        self.line = line
        where = []
        if self.path is not None:
            where.append(self.path + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        if value is not None:
            v = repr(value)
            where.append(f"value {v if len(v) <= 80 else v[:77] + '...'}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class ConfigError(HybridRayError, ValueError):
    """Bad configuration, raised before any Ray worker starts. Names the key."""

    def __init__(self, message: str, *, key: str | None = None, value: object = None) -> None:
        self.key = key
        self.value = value
        self.message = message  # without the key prefix: callers that re-key an error reuse it
        prefix = f"config key '{key}'" if key else "config"
        if value is not None:
            prefix += f" = {value!r}"
        super().__init__(f"{prefix}: {message}")


class CheckpointError(HybridRayError):
    """A checkpoint to resume from is missing or incomplete. Names the checkpoint directory."""


class TrainingError(HybridRayError, RuntimeError):
    """A training run ended without what it must produce (e.g. no checkpoint to export)."""


class ModelError(HybridRayError):
    """A model directory or name that cannot be loaded. Names the path."""
