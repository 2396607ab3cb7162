from __future__ import annotations

import pytest

from qualification.phones import Phone, find_phones, normalize_phone


class TestNormalizePhone:
    """PH-1: Russian and foreign numbers normalised to E.164."""

    @pytest.mark.parametrize(
        ("raw", "e164"),
        [
            ("8 (999) 000-00-01", "+79990000001"),
            ("+7 999 000 00 01", "+79990000001"),
            ("79990000001", "+79990000001"),
            ("89990000001", "+79990000001"),
            ("9990000001", "+79990000001"),
            ("+7(999)0000001", "+79990000001"),
            ("8-999-000-00-01", "+79990000001"),
            ("8.999.000.00.01", "+79990000001"),
            (
                "\uff18\uff19\uff19\uff19\uff10\uff10\uff10\uff10\uff1001",
                "+79990000001",
            ),  # full-width
            ("  +7 999 000-00-01\n", "+79990000001"),
            ("8-812-000-00-01", "+78120000001"),
            ("+7 (812) 000-00-01", "+78120000001"),
            ("8 800 000-00-01", "+78000000001"),
            ("+380 44 000 00 01", "+380440000001"),
            ("8 10 375 29 1234567", "+375291234567"),
        ],
    )
    def test_a_typed_number_becomes_e164(self, raw: str, e164: str) -> None:
        phone = normalize_phone(raw)

        assert phone is not None
        assert phone.e164 == e164
        assert phone.extension is None

    def test_the_8_of_812_is_kept_and_the_trunk_8_is_dropped(self) -> None:
        assert normalize_phone("8 812 000 00 01") == Phone("+78120000001", None, "RU")

    def test_an_extension_is_kept_apart_from_the_number(self) -> None:
        phone = normalize_phone("+7 999 000-00-01 доб. 123")

        assert phone == Phone("+79990000001", "123", "RU")

    def test_a_foreign_number_keeps_its_region(self) -> None:
        phone = normalize_phone("+380 44 000 00 01")

        assert phone is not None
        assert phone.region == "UA"

    def test_a_kazakh_number_shares_plus_7_but_not_the_region(self) -> None:
        phone = normalize_phone("+7 701 000 00 01")

        assert phone == Phone("+77010000001", None, "KZ")

    @pytest.mark.parametrize(
        "raw",
        [
            "12345",
            "8999000000",
            "70000000000",
            "00 7 999 000 00 01",
            "",
            "   ",
            "не скажу",
            "завтра после 18",
            "9" * 80,
        ],
    )
    def test_an_invalid_number_is_none_so_the_dialog_asks_again(self, raw: str) -> None:
        assert normalize_phone(raw) is None


class TestFindPhones:
    def test_finds_a_number_inside_a_sentence_with_its_exact_characters(
        self,
    ) -> None:
        text = "Анна, мой номер 8 (999) 000-00-01, звоните после 18"

        found = find_phones(text)

        assert [item.raw for item in found] == ["8 (999) 000-00-01"]
        assert found[0].phone.e164 == "+79990000001"
        assert text[found[0].start : found[0].end] == "8 (999) 000-00-01"

    def test_a_ten_digit_tax_id_is_not_a_phone(self) -> None:
        found = find_phones("ИНН 7701234567, телефон +7 999 000 00 01")

        assert [item.phone.e164 for item in found] == ["+79990000001"]

    @pytest.mark.parametrize(
        "text", ["завтра 15.12 в 10:30", "до 3000 руб", "15.12.2025 10:30", "12345"]
    )
    def test_dates_times_and_money_are_not_phones(self, text: str) -> None:
        assert find_phones(text) == []
