"""Language codes and per-language metadata for reporting.

Codes: any valid ISO 639-1 or ISO 639-3 language, written as a *normalised BCP-47 base tag*:
lower case, the ISO 639-1 code where one exists (``nya`` -> ``ny``, ``zho`` -> ``zh``), deprecated
codes replaced (``iw`` -> ``he``), region / script subtags dropped (``en-US`` -> ``en``). Parsing
and validity come from the maintained ``langcodes`` library (IANA subtag registry + CLDR), so a
pairs file in Chichewa, Amharic or Quechua is as welcome as one in English, and ``xx`` or
``xx-bogus`` is rejected. One deliberate exception: CLDR aliases Tagalog ``tl`` to Filipino
``fil``; ISO 639 still lists ``tl`` (and LAReQA-style data sets and our Bible set use it), so
``tl``/``tgl`` stay ``tl``.

Metadata: ``hybrid_ray/configs/languages.csv`` (sources in its header) gives name, resource
class (Joshi et al. 2020, 0 = "left-behinds" .. 5 = "winners"), top-level family and script for
the languages we ship or evaluate; a user CSV with the same columns overrides or extends it. A
valid language missing from the table is allowed and reported as ``unclassified`` (name and
likely script from ``langcodes``).
"""

from __future__ import annotations

import csv
import importlib.resources
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import langcodes

from hybrid_ray.errors import DataError

ResourceGroup = Literal["low", "mid", "high", "unclassified"]
TABLE_COLUMNS = ("code", "name", "resource_class", "family", "script")
#: Codes that are valid tags but not one language: undetermined, no linguistic content, uncoded, multiple.
NOT_A_LANGUAGE = frozenset({"und", "zxx", "mis", "mul"})
#: CLDR aliases we do not follow (see the module docstring).
KEEP_ALIAS = {"tl": "tl", "tgl": "tl"}


@dataclass(frozen=True)
class LanguageInfo:
    """What reports say about one language."""

    code: str
    name: str
    resource_class: int | None  # Joshi et al. (2020) class 0-5, None when unclassified
    resource_group: ResourceGroup
    family: str | None
    script: str | None


def resource_group(resource_class: int | None) -> ResourceGroup:
    """``low`` = classes 0-2, ``mid`` = 3, ``high`` = 4-5 (the usual reading of Joshi et al.'s taxonomy)."""
    if resource_class is None:
        return "unclassified"
    return "low" if resource_class <= 2 else "mid" if resource_class == 3 else "high"


@lru_cache(maxsize=4096)
def _normalize(code: str) -> str | None:
    raw = code.strip().replace("_", "-")
    base = raw.split("-")[0].lower()
    if base in KEEP_ALIAS and langcodes.tag_is_valid(raw):
        return KEEP_ALIAS[base]
    try:
        if not langcodes.tag_is_valid(raw):
            return None
        lang = langcodes.Language.get(raw).language
    except (langcodes.LanguageTagError, ValueError):
        return None
    if not lang or lang in NOT_A_LANGUAGE or not 2 <= len(lang) <= 3:
        return None
    return lang


def normalize_lang(code: str) -> str:
    """The normalised base tag of ``code`` (``"EN-us"`` -> ``"en"``); DataError if not a valid language."""
    if not isinstance(code, str) or not code.strip():
        raise DataError("empty language code", field="lang", value=code)
    norm = _normalize(code)
    if norm is None:
        raise DataError("not a valid ISO 639 language code (BCP-47 language tag)", field="lang", value=code)
    return norm


def is_valid_lang(code: object) -> bool:
    """Whether ``code`` names a language :func:`normalize_lang` accepts."""
    return isinstance(code, str) and bool(code.strip()) and _normalize(code) is not None


def _int_or_none(value: str, path: Path, line: int) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 5:
        raise DataError("resource_class must be an integer 0-5 or empty", path=path, field="resource_class",
                        value=value, line=line)
    return number


def _read_table(path: Path) -> dict[str, LanguageInfo]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the language table: {exc}", path=path) from exc
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DataError("empty language table", path=path)
    rows = csv.reader([ln for _, ln in lines])
    header = [h.strip() for h in next(rows)]
    missing = [c for c in TABLE_COLUMNS if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing} (expected {', '.join(TABLE_COLUMNS)})", path=path,
                        field=missing[0], line=lines[0][0])
    table: dict[str, LanguageInfo] = {}
    for (line, _), values in zip(lines[1:], rows, strict=True):
        row = dict(zip(header, (v.strip() for v in values), strict=False))
        try:
            code = normalize_lang(row.get("code", ""))
        except DataError as exc:
            raise DataError("not a valid ISO 639 language code", path=path, field="code",
                            value=row.get("code"), line=line) from exc
        if code != row["code"]:
            raise DataError(f"write the normalised code {code!r}", path=path, field="code", value=row["code"],
                            line=line)
        cls = _int_or_none(row.get("resource_class", ""), path, line)
        table[code] = LanguageInfo(
            code=code,
            name=row.get("name") or _display_name(code),
            resource_class=cls,
            resource_group=resource_group(cls),
            family=row.get("family") or None,
            script=row.get("script") or None,
        )
    return table


def default_table_path() -> Path:
    return Path(str(importlib.resources.files("hybrid_ray") / "configs" / "languages.csv"))


@lru_cache(maxsize=1)
def _default() -> dict[str, LanguageInfo]:
    return _read_table(default_table_path())


def load_language_table(path: str | Path | None = None) -> dict[str, LanguageInfo]:
    """The shipped table, with the rows of the user CSV ``path`` (same columns) replacing or adding
    codes. The shipped file is read once per process; a user file at every call (it may change)."""
    table = dict(_default())
    if path is not None:
        table.update(_read_table(Path(path).expanduser()))
    return table


def _display_name(code: str) -> str:
    try:
        return langcodes.Language.get(code).display_name()
    except Exception:  # noqa: BLE001 - names need the optional language_data package; the code will do
        return code


def _likely_script(code: str) -> str | None:
    try:
        return langcodes.Language.get(code).maximize().script
    except Exception:  # noqa: BLE001 - likely-subtag data missing: no script rather than no report
        return None


def language_info(code: str, table: dict[str, LanguageInfo] | None = None) -> LanguageInfo:
    """Metadata of ``code`` (normalised first); a valid language missing from the table is ``unclassified``."""
    norm = normalize_lang(code)
    known = (table if table is not None else _default()).get(norm)
    if known is not None:
        return known
    return LanguageInfo(norm, _display_name(norm), None, "unclassified", None, _likely_script(norm))
