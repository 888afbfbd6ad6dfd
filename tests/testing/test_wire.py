"""Ollama's wire conventions: Go JSON errors, durations, keep_alive, options and timestamps."""

from __future__ import annotations

import math
import re

import pytest

from ollama_asgi.testing.gojson import decode_request
from ollama_asgi.testing.wire import (
    ApiError,
    EmptyBody,
    human_bytes,
    parse_go_duration,
    parse_keep_alive,
    resolve_options,
    rfc3339,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600.0), (1.5, 1.5), ("10m", 600.0), ("1h30m", 5400.0), ("0", 0.0), (0, 0.0), ("500ms", 0.5)],
)
def test_keep_alive_values(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, -0.5, "-1m"])
def test_negative_keep_alive_means_forever(value: object) -> None:
    assert parse_keep_alive(value) == math.inf


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3600", 'time: missing unit in duration "3600"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("soon", 'time: invalid duration "soon"'),
        (True, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: '[]interface {}'"),
    ],
)
def test_keep_alive_errors_are_go_messages(value: object, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_keep_alive(value)
    assert (caught.value.status, caught.value.message) == (400, message)


def test_go_duration_sums_units() -> None:
    assert parse_go_duration("1m30.5s") == pytest.approx(90.5)


def test_empty_body_is_reported_as_missing() -> None:
    with pytest.raises(EmptyBody):
        decode_request(b"  \n", "GenerateRequest")


def test_malformed_json_gives_the_go_decoder_message() -> None:
    with pytest.raises(ApiError, match=r"^invalid character 'x' looking for beginning of value$"):
        decode_request(b"xyz", "GenerateRequest")


def test_truncated_json_is_unexpected_eof() -> None:
    with pytest.raises(ApiError, match="^unexpected EOF$"):
        decode_request(b'{"model": "a"', "GenerateRequest")


def test_trailing_data_after_the_object_is_ignored_like_go() -> None:
    assert decode_request(b'{"model": "a"} trailing', "GenerateRequest") == {"model": "a"}


def test_wrong_field_type_names_the_go_struct_field() -> None:
    with pytest.raises(ApiError) as caught:
        decode_request(b'{"model": "a", "stream": "yes"}', "GenerateRequest")
    assert (
        caught.value.message == "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"
    )


def test_a_message_field_type_error_names_the_alias_type_messages_decode_through() -> None:
    with pytest.raises(ApiError, match=r"Go struct field Alias\.content of type string"):
        decode_request(b'{"messages": [{"role": "user", "content": 5}]}', "ChatRequest")


def test_fields_match_case_insensitively_and_unknown_ones_are_ignored() -> None:
    assert decode_request(b'{"MODEL": "a", "extra": 1, "prompt": null}', "GenerateRequest") == {"model": "a"}


def test_wrong_option_type_is_a_500_naming_the_option() -> None:
    with pytest.raises(ApiError) as caught:
        resolve_options(4096, (), {"num_ctx": "big"})
    assert (caught.value.status, caught.value.message) == (500, 'option "num_ctx" must be of type integer')


def test_options_layer_defaults_then_model_parameters_then_request() -> None:
    options = resolve_options(4096, (("num_ctx", 8192), ("num_predict", 3)), {"num_predict": 5, "bogus": 1})
    assert options.values["num_ctx"] == 8192
    assert options.num_predict == 5
    assert "bogus" not in options.values


def test_runner_options_clamp_num_ctx_to_the_model_and_a_minimum() -> None:
    assert resolve_options(1, (), None).runner(4096, vision=False).num_ctx == 4
    assert resolve_options(100000, (), None).runner(4096, vision=False).num_ctx == 4096
    assert resolve_options(512, (), None).runner(8192, vision=True).num_ctx == 2048


def test_timestamps_are_rfc3339_utc_with_trimmed_nanoseconds() -> None:
    assert rfc3339(1_700_000_000_123_400_000) == "2023-11-14T22:13:20.1234Z"
    assert rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", rfc3339())


def test_human_bytes_matches_ollama_format() -> None:
    assert human_bytes(3 * 2**30 // 2) == "1.5 GiB"
    assert human_bytes(512) == "512 B"
