"""Loading rate tables: the shipped ones are valid, and every malformed table stops the start
with a message naming the file, the key and what is wrong."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from app.pricing import Catalog, PricingConfigError, load_catalog
from tests.pricing.conftest import FIXTURE_DIR, WriteTables

VALID = """
currency = "EUR"
effective_from = 2025-01-01

[suffixes]
"-online" = 6.00

[aliases]
"llama-3-1-8b" = "llama-3.1-8b"

[models."llama-3.1-8b"]
owned_by = "meta"
context_length = 131072
input = 0.20
output = 0.20
"""


def load_error(tables: WriteTables, text: str, name: str = "bad") -> str:
    with pytest.raises(PricingConfigError) as caught:
        load_catalog(tables(**{name: text}))
    message = str(caught.value)
    assert f"{name}.toml" in message  # every message names the file
    return message


def test_the_shipped_table_is_camocopys_exactly(shipped: Catalog) -> None:
    (version,) = shipped.versions
    assert (version.currency, version.effective_from) == ("EUR", date(2025, 1, 1))
    assert dict(version.suffixes) == {"-online": Decimal("6.00"), "-deep": Decimal("12.00")}
    table = {
        m.name: (m.input, m.output, m.cached_input, m.image, m.owned_by, m.context_length)
        for m in version.models
    }
    assert table == {
        "llama-3.3-70b": (Decimal("0.80"), Decimal("0.80"), None, None, "meta", 131072),
        "llama-3.1-8b": (Decimal("0.20"), Decimal("0.20"), None, None, "meta", 131072),
        "deepseek-r1-70b": (Decimal("8.00"), Decimal("8.50"), None, None, "deepseek", 131072),
        "pixtral-12b-2409": (
            Decimal("0.35"),
            Decimal("0.35"),
            None,
            Decimal("0.001"),
            "mistralai",
            131072,
        ),
    }
    # No invented prices: nothing but chat prices is shipped.
    for m in version.models:
        assert m.embedding is None and m.image_generation is None
        assert m.transcription_per_minute is None and m.speech_per_million_characters is None


def test_the_fixture_directory_is_valid_and_matches_the_shipped_chat_prices(
    shipped: Catalog,
) -> None:
    fixture = load_catalog(FIXTURE_DIR)
    shipped_models = {m.name: m for m in shipped.versions[0].models}
    fixture_models = {m.name: m for m in fixture.versions[0].models}
    for name, model in shipped_models.items():
        assert fixture_models[name] == model
    assert fixture.versions[0].suffixes == shipped.versions[0].suffixes


def test_no_float_reaches_the_catalog(tables: WriteTables) -> None:
    catalog = load_catalog(tables(v=VALID.replace("input = 0.20", 'input = "0.20"')))
    model = catalog.versions[0].models[0]
    assert type(model.input) is Decimal and type(model.output) is Decimal
    assert model.input == model.output == Decimal("0.20")


def test_tiers_toml_is_not_a_rate_table(tables: WriteTables) -> None:
    directory = tables(v=VALID)
    (directory / "tiers.toml").write_text('basis = "purchased"\n')
    assert len(load_catalog(directory).versions) == 1


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PricingConfigError, match="no rate tables"):
        load_catalog(tmp_path)


def test_negative_price(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("input = 0.20", "input = -0.20"))
    assert "models.llama-3.1-8b.input: must not be negative (got -0.20)" in message


def test_negative_suffix_fee(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace('"-online" = 6.00', '"-online" = -6'))
    assert "suffixes.-online: must not be negative" in message


def test_unknown_currency(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace('"EUR"', '"EURO"'))
    assert "currency: unknown currency 'EURO'; expected one of" in message


def test_duplicate_model_differing_only_in_case(tables: WriteTables) -> None:
    text = VALID + '\n[models."Llama-3.1-8B"]\nowned_by = "meta"\ninput = 1\noutput = 1\n'
    message = load_error(tables, text)
    assert "models.Llama-3.1-8B: duplicate model name: models.llama-3.1-8b already uses it" in (
        message
    )


def test_model_name_colliding_with_an_alias(tables: WriteTables) -> None:
    text = VALID.replace('"llama-3-1-8b" = "llama-3.1-8b"', '"LLAMA-3.1-8B" = "llama-3.1-8b"')
    message = load_error(tables, text)
    assert "aliases.LLAMA-3.1-8B: duplicate model name: models.llama-3.1-8b already uses it" in (
        message
    )


def test_bad_date(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("2025-01-01", '"2025-02-30"'))
    assert "effective_from: '2025-02-30' is not a valid date" in message


def test_missing_date(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("effective_from = 2025-01-01", ""))
    assert "effective_from: missing" in message


def test_date_with_a_time(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("2025-01-01", "2025-01-01T12:00:00Z"))
    assert "effective_from: must be a date without a time" in message


def test_alias_cycle(tables: WriteTables) -> None:
    text = VALID.replace(
        '"llama-3-1-8b" = "llama-3.1-8b"', '"llama-a" = "llama-b"\n"llama-b" = "llama-a"'
    )
    message = load_error(tables, text)
    assert "aliases.llama-a: alias cycle: llama-a → llama-b → llama-a" in message


def test_alias_pointing_to_nothing(tables: WriteTables) -> None:
    text = VALID.replace('"llama-3-1-8b" = "llama-3.1-8b"', '"llama-3-1-8b" = "llama-3.1-9b"')
    message = load_error(tables, text)
    assert "aliases.llama-3-1-8b: points to `llama-3.1-9b`, which is neither a model" in message


def test_alias_chains_resolve_to_the_model(tables: WriteTables) -> None:
    text = VALID.replace(
        '"llama-3-1-8b" = "llama-3.1-8b"',
        '"old" = "llama-3-1-8b"\n"llama-3-1-8b" = "LLAMA-3.1-8B"',
    )
    catalog = load_catalog(tables(v=text))
    aliases = dict(catalog.versions[0].aliases)
    assert aliases == {"old": "llama-3.1-8b", "llama-3-1-8b": "llama-3.1-8b"}
    assert catalog.resolve("OLD-online", datetime(2025, 2, 1, tzinfo=UTC)).name == (
        "llama-3.1-8b-online"
    )


def test_unknown_key_suggests_the_right_one(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("output = 0.20", "ouput = 0.20"))
    assert "models.llama-3.1-8b.ouput: unknown key; did you mean `output`?" in message


def test_unknown_top_level_key(tables: WriteTables) -> None:
    message = load_error(tables, 'curency = "EUR"\n' + VALID)
    assert ": curency: unknown key; did you mean `currency`?" in message


def test_too_many_decimal_places(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("input = 0.20", "input = 0.0000001"))
    assert "models.llama-3.1-8b.input: 1E-7 has more than 6 decimal places" in message


def test_trailing_zeros_do_not_count_as_decimal_places(tables: WriteTables) -> None:
    catalog = load_catalog(tables(v=VALID.replace("input = 0.20", "input = 0.200000000")))
    assert catalog.versions[0].models[0].input == Decimal("0.2")


def test_model_name_ending_in_a_suffix(tables: WriteTables) -> None:
    text = VALID + '\n[models."search-Online"]\nowned_by = "x"\ninput = 1\noutput = 1\n'
    message = load_error(tables, text)
    assert "models.search-Online: ends in the suffix -online" in message


def test_input_without_output(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("output = 0.20\n", ""))
    assert "models.llama-3.1-8b.output: missing; input and output are priced together" in message


def test_a_model_without_prices(tables: WriteTables) -> None:
    text = VALID + '\n[models."empty"]\nowned_by = "x"\n'
    assert "models.empty: no prices; give at least one of input" in load_error(tables, text)


def test_price_that_is_not_a_number(tables: WriteTables) -> None:
    message = load_error(tables, VALID.replace("input = 0.20", 'input = "cheap"'))
    assert "models.llama-3.1-8b.input: 'cheap' is not a decimal number" in message


def test_transcription_price_must_be_exact_per_second(tables: WriteTables) -> None:
    text = VALID + '\n[models."whisper"]\nowned_by = "x"\ntranscription_per_minute = 0.001\n'
    message = load_error(tables, text)
    assert "models.whisper.transcription_per_minute: 0.001 per minute is not exact per second" in (
        message
    )


def test_image_generation_default_must_be_priced(tables: WriteTables) -> None:
    text = (
        VALID
        + """
[models."img"]
owned_by = "x"

[models."img".image_generation]
default_size = "512x512"
default_quality = "standard"

[models."img".image_generation.prices]
"1024x1024" = { standard = 0.04 }
"""
    )
    message = load_error(tables, text)
    assert "models.img.image_generation.default_quality: size 512x512 with quality standard" in (
        message
    )


def test_invalid_toml_names_the_file_and_line(tables: WriteTables) -> None:
    message = load_error(tables, VALID + "\ninput = = 1\n")
    assert "not valid TOML" in message and "line" in message


def test_two_versions_with_the_same_effective_from(tables: WriteTables) -> None:
    with pytest.raises(PricingConfigError) as caught:
        load_catalog(tables(a=VALID, b=VALID))
    assert "b.toml: effective_from: 2025-01-01 is also the effective_from of" in str(caught.value)
    assert "a.toml" in str(caught.value)


def test_versions_in_different_currencies(tables: WriteTables) -> None:
    later = VALID.replace('"EUR"', '"USD"').replace("2025-01-01", "2025-06-01")
    with pytest.raises(PricingConfigError) as caught:
        load_catalog(tables(a=VALID, b=later))
    assert "b.toml: currency: USD differs from EUR in" in str(caught.value)
