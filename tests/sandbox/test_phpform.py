"""PHP-style parsing: what `parse_str`, `intval` and a PHP boolean cast would give."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.phpform import densify, intval, lower_keys, parse_str, truthy


class TestParseStr:
    def test_bracketed_keys_nest_into_objects(self) -> None:
        parsed = parse_str("fields[TITLE]=Site+request&fields[SOURCE_ID]=WEB")

        assert parsed == {"fields": {"TITLE": "Site request", "SOURCE_ID": "WEB"}}

    def test_numeric_indices_make_lists_of_objects(self) -> None:
        parsed = parse_str(
            "fields[PHONE][0][VALUE]=%2B79990000001&fields[PHONE][0][VALUE_TYPE]=WORK"
            "&fields[PHONE][1][VALUE]=%2B79990000002"
        )

        assert parsed == {
            "fields": {
                "PHONE": [
                    {"VALUE": "+79990000001", "VALUE_TYPE": "WORK"},
                    {"VALUE": "+79990000002"},
                ]
            }
        }

    def test_empty_brackets_append(self) -> None:
        parsed = parse_str("select[]=ID&select[]=TITLE&filter[@ASSIGNED_BY_ID][]=1")

        assert parsed == {
            "select": ["ID", "TITLE"],
            "filter": {"@ASSIGNED_BY_ID": ["1"]},
        }

    def test_a_bracket_holding_one_space_also_appends(self) -> None:
        assert parse_str("select[ ]=ID&select[ ]=TITLE") == {"select": ["ID", "TITLE"]}

    def test_percent_encoded_operators_stay_part_of_the_key(self) -> None:
        parsed = parse_str("filter[%3E%3DOPPORTUNITY]=15&filter[!STAGE_ID]=WON")

        assert parsed == {"filter": {">=OPPORTUNITY": "15", "!STAGE_ID": "WON"}}

    def test_unencoded_operators_in_keys_are_read_too(self) -> None:
        assert parse_str("filter[>ID]=4711") == {"filter": {">ID": "4711"}}

    def test_values_stay_strings(self) -> None:
        assert parse_str("start=50&halt=0") == {"start": "50", "halt": "0"}

    def test_plus_is_a_space_and_percent_escapes_decode(self) -> None:
        assert parse_str("q=a+b%26c%3Dd") == {"q": "a b&c=d"}

    def test_a_key_without_value_is_an_empty_string(self) -> None:
        assert parse_str("flag&other=") == {"flag": "", "other": ""}

    def test_a_later_pair_overwrites_an_earlier_one(self) -> None:
        assert parse_str("id=1&id=2") == {"id": "2"}

    def test_a_gap_in_numeric_keys_keeps_an_object(self) -> None:
        assert parse_str("ids[0]=a&ids[2]=b") == {"ids": {"0": "a", "2": "b"}}

    def test_keys_out_of_order_keep_an_object(self) -> None:
        assert parse_str("ids[1]=a&ids[0]=b") == {"ids": {"1": "a", "0": "b"}}

    def test_appending_continues_after_the_highest_numeric_key(self) -> None:
        assert parse_str("ids[5]=a&ids[]=b") == {"ids": {"5": "a", "6": "b"}}

    def test_dots_and_spaces_in_top_level_names_become_underscores(self) -> None:
        assert parse_str("a.b=1&c+d=2") == {"a_b": "1", "c_d": "2"}

    def test_dots_inside_brackets_are_kept(self) -> None:
        assert parse_str("a[b.c]=1") == {"a": {"b.c": "1"}}

    def test_leading_spaces_of_a_name_are_dropped(self) -> None:
        assert parse_str("%20%20id=7") == {"id": "7"}

    def test_a_pair_with_an_empty_name_is_dropped(self) -> None:
        assert parse_str("=1&[a]=2&%20=3&id=4") == {"id": "4"}

    def test_an_unclosed_first_bracket_becomes_part_of_the_name(self) -> None:
        assert parse_str("a[b=1") == {"a_b": "1"}

    def test_an_unclosed_inner_bracket_is_ignored(self) -> None:
        assert parse_str("a[b][c=1") == {"a": {"b": "1"}}

    def test_text_after_the_last_bracket_is_ignored(self) -> None:
        assert parse_str("a[b]tail=1") == {"a": {"b": "1"}}

    def test_a_scalar_is_replaced_by_an_array_when_nested_later(self) -> None:
        assert parse_str("a=1&a[b]=2") == {"a": {"b": "2"}}

    def test_empty_pairs_are_skipped(self) -> None:
        assert parse_str("&&id=1&") == {"id": "1"}

    def test_an_empty_string_parses_to_nothing(self) -> None:
        assert parse_str("") == {}

    def test_a_double_encoded_batch_command_decodes_once(self) -> None:
        parsed = parse_str("cmd[a]=crm.deal.list%3Ffilter%255B%253EID%255D%3D5")

        assert parsed == {"cmd": {"a": "crm.deal.list?filter%5B%3EID%5D=5"}}


class TestDensify:
    def test_dense_numeric_keys_become_a_list(self) -> None:
        assert densify({"0": "a", "1": "b"}) == ["a", "b"]

    def test_it_recurses_into_values(self) -> None:
        assert densify({"x": {"0": {"0": 1}}}) == {"x": [[1]]}

    def test_an_empty_object_stays_an_object(self) -> None:
        assert densify({}) == {}


class TestIntval:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("50", 50),
            ("  12abc", 12),
            ("-1", -1),
            ("+7", 7),
            ("abc", 0),
            ("", 0),
            ("2.9", 2),
            ("1e3", 1000),
            (".5", 0),
            ("0x1A", 0),
            (None, 0),
            (True, 1),
            (False, 0),
            (49.99, 49),
            (float("nan"), 0),
            ([], 0),
            (["x"], 1),
        ],
    )
    def test_reads_like_php(self, value: Any, expected: int) -> None:
        assert intval(value) == expected

    def test_none_gives_the_default(self) -> None:
        assert intval(None, default=-1) == -1


class TestTruthy:
    @pytest.mark.parametrize(
        "value", ["false", "1", "0.0", " ", "N", 1, -1, 0.5, [0], {"a": 0}, True]
    )
    def test_these_are_true_in_php(self, value: Any) -> None:
        assert truthy(value) is True

    @pytest.mark.parametrize("value", ["", "0", 0, 0.0, [], {}, None, False])
    def test_these_are_false_in_php(self, value: Any) -> None:
        assert truthy(value) is False


class TestLowerKeys:
    def test_finds_lower_upper_and_title_case(self) -> None:
        params = {"FIELDS": {"A": 1}, "Filter": {"B": 2}, "order": {"C": "ASC"}}

        found = lower_keys(params, "fields", "filter", "order", "select")

        assert found == {"fields": {"A": 1}, "filter": {"B": 2}, "order": {"C": "ASC"}}

    def test_mixed_case_is_not_found(self) -> None:
        assert lower_keys({"fIeLdS": {}}, "fields") == {}

    def test_lower_case_wins_when_several_are_sent(self) -> None:
        assert lower_keys({"FIELDS": 1, "fields": 2}, "fields") == {"fields": 2}
