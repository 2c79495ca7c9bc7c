"""Language codes (any valid ISO 639) and the shipped, overridable metadata table."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_ray.errors import DataError
from hybrid_ray.languages import (
    LanguageInfo,
    is_valid_lang,
    language_info,
    load_language_table,
    normalize_lang,
    resource_group,
)

DEMO = ("en", "de", "es", "ru", "ar", "zh", "hi", "tr", "vi", "sw", "bn", "tl", "fa",
        "it", "fr", "pt", "uk", "pl", "ro", "ja", "ko", "id")
PAPER = ("ar", "zh", "en", "de", "hi", "ru", "es", "th", "tr", "el", "vi")
MIRACL = ("ar", "bn", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "zh",
          "de", "yo")
LOW_RESOURCE = ("ny", "am", "ha", "qu", "yo", "sw", "zu", "ig", "so")


@pytest.mark.parametrize(
    ("code", "norm"),
    [("en", "en"), ("EN", "en"), ("en-US", "en"), ("en_GB", "en"), ("eng", "en"), ("nya", "ny"),
     ("zho", "zh"), ("zh-Hans", "zh"), ("iw", "he"), ("tl", "tl"), ("tgl", "tl"), ("fil", "fil"),
     ("ceb", "ceb"), ("qu", "qu"), ("am", "am")],
)
def test_normalize_lang(code: str, norm: str) -> None:
    assert normalize_lang(code) == norm and is_valid_lang(code)


@pytest.mark.parametrize("code", ["xx", "xx-bogus", "english", "und", "mul", "", "  ", "e", "en-", "123"])
def test_invalid_codes_are_rejected(code: str) -> None:
    assert not is_valid_lang(code)
    with pytest.raises(DataError) as e:
        normalize_lang(code)
    assert e.value.value == code


def test_table_covers_demo_paper_miracl_and_low_resource_languages() -> None:
    table = load_language_table()
    missing = sorted(set(DEMO + PAPER + MIRACL + LOW_RESOURCE) - set(table))
    assert not missing
    for code, info in table.items():
        assert normalize_lang(code) == code == info.code
        assert info.resource_class in range(6) and info.family and info.script and info.name
    # A few classes of Joshi et al. (2020), Table 1 / lang2tax.txt.
    assert [table[c].resource_class for c in ("en", "ru", "bn", "sw", "ny")] == [5, 4, 3, 2, 1]


def test_language_info_known_and_unclassified() -> None:
    assert language_info("NYA") == LanguageInfo("ny", "Chichewa (Nyanja)", 1, "low", "Atlantic-Congo", "Latn")
    assert language_info("fa").resource_group == "high" and language_info("th").resource_group == "mid"
    tok = language_info("tpi")  # Tok Pisin: valid, not in the table
    assert (tok.code, tok.resource_class, tok.resource_group, tok.family) == ("tpi", None, "unclassified", None)
    assert tok.name == "Tok Pisin" and tok.script == "Latn"
    with pytest.raises(DataError):
        language_info("xx-bogus")
    assert [resource_group(c) for c in (0, 2, 3, 4, 5, None)] == ["low", "low", "mid", "high", "high", "unclassified"]


def test_user_table_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "langs.csv"
    path.write_text(
        "# my corrections\ncode,name,resource_class,family,script\n"
        "sw,Kiswahili,3,Atlantic-Congo,Latn\ntpi,Tok Pisin,,Indo-European (English-based creole),Latn\n",
        encoding="utf-8",
    )
    table = load_language_table(path)
    assert table["sw"].name == "Kiswahili" and table["sw"].resource_group == "mid"
    assert table["tpi"].resource_group == "unclassified" and table["tpi"].family.startswith("Indo-European")
    assert table["en"].resource_class == 5  # the rest of the shipped table stays
    assert language_info("tpi", table).family == table["tpi"].family
    assert load_language_table()["sw"].resource_class == 2  # the default is not modified


@pytest.mark.parametrize(
    ("body", "line", "field"),
    [
        ("code,name,resource_class,family,script\nxx-bogus,Bogus,1,f,Latn\n", 2, "code"),
        ("code,name,resource_class,family,script\nsw,Swahili,2,f,Latn\nnya,Chichewa,1,f,Latn\n", 3, "code"),
        ("code,name,resource_class,family,script\nsw,Swahili,7,f,Latn\n", 2, "resource_class"),
        ("code,name,family\nsw,Swahili,f\n", 1, "resource_class"),
    ],
)
def test_bad_user_table_names_file_line_and_field(tmp_path: Path, body: str, line: int, field: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_language_table(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), line, field)
