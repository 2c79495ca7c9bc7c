"""The data-format registry: one record per on-disk format, read by every command that takes data.

``hybrid-ray data convert --format``, ``hybrid-ray data stats``, ``hybrid-ray eval --format`` and
checkpoint validation used to keep their own lists of formats and their own detection rules;
now each format module describes itself once, with :func:`register_format`, and those commands
look formats up here (argparse ``choices`` come from :func:`format_names`).

Adding a format (e.g. BEIR) is one new module in ``hybrid_ray/data/`` ending with one
``register_format(DataFormat(...))`` call: the registry imports every module of the
``hybrid_ray.data`` package before its first lookup, so nothing else needs editing. Such a
module must import heavy or optional dependencies inside its loaders, because every lookup
imports it. Code outside the package (a test, a plug-in) registers the same way, from anywhere,
before the lookup.

A format provides what it can (the commands check for the capability they need):

* ``detect(path)``: cheap, from file names only; formats are tried in ``priority`` order, lowest
  first, because layouts overlap (a converted retrieval directory holds Parquet files, so it must
  be recognised before the pairs layout; a pairs directory may carry a MIRACL dev split);
* ``load_pairs(path, split, langs)``: a validated pairs table (training formats, ``kind="pairs"``);
* ``load_retrieval(path, split, langs)``: a :class:`RetrievalSet` (what ``eval`` and validation read);
* ``convert(path, options)``: what ``data convert`` writes: a pairs table (``kind="pairs"``, written
  as Parquet) or a RetrievalSet (``kind="retrieval"``, written as a directory);
* ``convert_stream(path, options)``: the same output with bounded memory, which ``data convert``
  prefers: pairs as an iterator of validated tables (one language per table), a retrieval set as
  a :class:`~hybrid_ray.data.streaming.StreamedRetrieval` (corpus as an iterator of tables);
* ``splits(path)``: ``{label: split}`` that ``data stats`` describes (default: the path as one split).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hybrid_ray.errors import DataError
from hybrid_ray.registry import Registry

if TYPE_CHECKING:
    import pyarrow as pa

    from hybrid_ray.data.retrieval import RetrievalSet
    from hybrid_ray.data.streaming import StreamedRetrieval

Kind = Literal["pairs", "retrieval"]
Capability = Literal["pairs", "retrieval", "convert", "read"]


@dataclass(frozen=True)
class ConvertOptions:
    """The ``data convert`` options a format's ``convert`` may read (each ignores the rest).

    ``split`` is None when the user gave none: each format applies its own default (MIRACL ``dev``,
    mMARCO ``train``).
    """

    langs: list[str] | None = None
    split: str | None = None
    max_triples: int | None = None
    negatives_per_pair: int = 1
    judged_only: bool = False


@dataclass(frozen=True)
class DataFormat:
    """One on-disk data format: how to recognise it and what can be read from it."""

    name: str
    label: str
    description: str
    kind: Kind
    detect: Callable[[Path], bool]
    load_pairs: Callable[[Path, str | None, list[str] | None], pa.Table] | None = None
    load_retrieval: Callable[[Path, str | None, list[str] | None], RetrievalSet] | None = None
    convert: Callable[[Path, ConvertOptions], pa.Table | RetrievalSet] | None = None
    convert_stream: Callable[[Path, ConvertOptions], Iterator[pa.Table] | StreamedRetrieval] | None = None
    splits: Callable[[Path], Mapping[str, str | None]] | None = None
    priority: int = 100
    aliases: tuple[str, ...] = ()

    def can(self, capability: Capability) -> bool:
        """Whether this format supports ``capability`` (``read``: pairs or retrieval loading)."""
        if capability == "read":
            return self.load_pairs is not None or self.load_retrieval is not None
        hook = {"pairs": self.load_pairs, "retrieval": self.load_retrieval, "convert": self.convert}[capability]
        return hook is not None

    def stats_splits(self, path: Path) -> Mapping[str, str | None]:
        """``{label: split}`` described by ``data stats`` (the whole path when the format has no splits)."""
        return self.splits(path) if self.splits is not None else {path.name: None}


def _import_format_modules() -> None:
    """Import every module of ``hybrid_ray.data``: each format registers itself when imported."""
    import hybrid_ray.data as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name != "formats":
            importlib.import_module(f"{package.__name__}.{info.name}")


def _format_error(message: str, name: str) -> DataError:
    return DataError(message, field="format", value=name)


FORMATS: Registry[DataFormat] = Registry("data format", _format_error, loader=_import_format_modules)


def register_format(fmt: DataFormat, *, replace: bool = False) -> DataFormat:
    """Add ``fmt`` to the registry (DataError if its name or an alias is taken, unless ``replace``)."""
    return FORMATS.register(fmt.name, fmt, fmt.aliases, replace=replace)


def unregister_format(name: str) -> DataFormat:
    return FORMATS.unregister(name)


def get_format(name: str, capability: Capability | None = None) -> DataFormat:
    """The format called ``name`` (or an alias); DataError naming the registered ones otherwise.

    With ``capability``, a format that lacks it is an error too (e.g. ``eval`` on mMARCO).
    """
    fmt = FORMATS.get(name)
    if capability is not None and not fmt.can(capability):
        raise _missing_capability(fmt, capability, None)
    return fmt


def format_names(capability: Capability | None = None) -> list[str]:
    """Names and aliases of the formats that support ``capability`` (all when None), sorted."""
    names = []
    for fmt in FORMATS.values():
        if capability is None or fmt.can(capability):
            names += [fmt.name, *fmt.aliases]
    return sorted(names)


def _missing_capability(fmt: DataFormat, capability: Capability, path: Path | None) -> DataError:
    if capability in ("read", "retrieval") and fmt.can("convert") and not fmt.can(capability):
        return DataError(
            f"looks like {fmt.label}: convert it first (hybrid-ray data convert --format {fmt.name})", path=path
        )
    what = {"pairs": "training pairs", "retrieval": "an evaluation set", "convert": "conversion",
            "read": "reading"}[capability]
    return DataError(f"{fmt.label} ({fmt.name}) does not support {what}", path=path, field="format",
                     value=fmt.name)


def _detect(path: Path, capability: Capability | None, hint: str) -> DataFormat:
    if not path.exists():
        raise DataError("no such file or directory", path=path)
    for fmt in sorted(FORMATS.values(), key=lambda f: (f.priority, f.name)):
        if fmt.detect(path):
            if capability is not None and not fmt.can(capability):
                raise _missing_capability(fmt, capability, path)
            return fmt
    raise DataError(
        f"not a recognised data set (registered formats: {', '.join(FORMATS.names())}){hint}", path=path
    )


def detect_format(path: str | Path, capability: Capability | None = None, *, hint: str = "") -> str:
    """The name of the registered format ``path`` is in, judged from file names (nothing is parsed).

    Formats are tried by ``priority`` (then name). DataError when the path does not exist, when no
    format recognises it (the message lists the registered formats, plus ``hint``), or when the
    detected format lacks ``capability`` (an mMARCO directory must be converted before ``stats``).
    """
    return _detect(Path(path), capability, hint).name


def resolve_format(
    path: str | Path, name: str = "auto", capability: Capability | None = None, *, hint: str = ""
) -> DataFormat:
    """The format called ``name``, or the one detected at ``path`` for ``"auto"``, checked for ``capability``."""
    if name == "auto":
        return _detect(Path(path), capability, hint)
    return get_format(name, capability)


def load_retrieval_set(
    path: str | Path,
    fmt: str = "auto",
    split: str | None = None,
    langs: list[str] | None = None,
    *,
    hint: str = "",
) -> RetrievalSet:
    """Load an evaluation set of any registered format (``"auto"``: detected) into a RetrievalSet.

    ``split`` and ``langs`` mean what the format says (pairs: default ``test``; MIRACL: ``dev``).
    """
    path = Path(path)
    loader = resolve_format(path, fmt, "retrieval", hint=hint).load_retrieval
    assert loader is not None  # resolve_format checked the capability
    return loader(path, split, langs)
