from __future__ import annotations

import pytest

from ollama_asgi.errors import GatewayError
from ollama_asgi.protocol import parse_request
from ollama_asgi.routing import match_route

CHAT = match_route("/api/chat")
OPENAI_CHAT = match_route("/v1/chat/completions")


def parse(raw: bytes, route=CHAT):  # type: ignore[no-untyped-def]
    return parse_request(route, raw, max_num_ctx=131072)  # type: ignore[arg-type]


def test_stream_defaults_to_true_on_native_and_false_on_openai() -> None:
    assert parse(b'{"model":"m"}').stream is True
    assert parse(b'{"model":"m","stream":false}').stream is False
    assert parse(b'{"model":"m"}', OPENAI_CHAT).stream is False
    assert parse(b'{"model":"m","stream":true}', OPENAI_CHAT).stream is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"model": ""}', "model is required"),
        (b'{"prompt": "hi"}', "model is required"),
        (b'{"model": 7}', "model must be a string"),
        (b'{"model": "../../etc/passwd"}', "invalid model name"),
        (b'{"model": "a/b/c/d"}', "invalid model name"),
        (b'{"model": "m", "stream": "yes"}', "stream must be a boolean"),
        (b'{"model": "m", "options": []}', "options must be an object"),
        (b'{"model": "m", "options": {"num_ctx": "big"}}', 'option "num_ctx" must be of type integer'),
        (b'{"model": "m", "options": {"num_ctx": 0}}', "num_ctx must be between 1 and 131072"),
        (b'{"model": "m", "options": {"num_ctx": 99999999999}}', "num_ctx must be between"),
        (b'{"model": "m", "options": {"temperature": "hot"}}', 'option "temperature" must be of type float32'),
        (b'{"model": "m", "keep_alive": "3600"}', 'missing unit in duration "3600"'),
        (b'{"model": "m", "keep_alive": true}', "Unsupported type: 'boolean'"),
        (b'{"model": "m", "messages": "hi"}', "messages must be an array"),
        (b"\xff\xfe{}", "invalid JSON"),
        (b"[" * 5000 + b"]" * 5000, "deeper than 254 levels"),
        (b'{"model": "m", "options": {"stop": 1}}', 'option "stop" must be of type array'),
        (b'{"model": "m", "options": {"stop": "x"}}', 'option "stop" must be of type array'),
        (b'{"model": "m", "options": {"stop": ["a", 1]}}', 'option "stop" must be of an array of strings'),
        (b'{"model": "m", "options": {"use_mmap": "yes"}}', 'option "use_mmap" must be of type boolean'),
        (b'{"model": "m", "options": {"num_thread": 2.5}}', 'option "num_thread" must be of type integer'),
        (b'{"model": "m", "options": {"seed": 1e30}}', 'option "seed" is out of range'),
        (b'{"model": "m", "options": {"top_k": "3"}}', 'option "top_k" must be of type integer'),
        (b'{"model": "m", "options": {"temperature": 1e300}}', 'option "temperature" must be a finite number'),
        (b'{"model": "m", "options": {"min_p": true}}', 'option "min_p" must be of type float32'),
    ],
)
def test_bad_bodies_get_a_clear_400(raw: bytes, message: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse(raw)
    assert info.value.status == 400
    assert message in info.value.message


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_top_logprobs_out_of_range_is_refused_before_the_model_is_named(path: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse(b'{"top_logprobs": 21}', match_route(path))
    assert info.value.message == "top_logprobs must be between 0 and 20"


def test_openai_fields_of_the_wrong_type_are_refused_in_gos_words() -> None:
    with pytest.raises(GatewayError) as info:
        parse(b'{"model":"m","max_tokens":"10"}', OPENAI_CHAT)
    assert info.value.message == (
        "json: cannot unmarshal string into Go struct field ChatCompletionRequest.max_tokens of type int"
    )


@pytest.mark.parametrize(
    "name", ["llama3.2", "llama3.2:latest", "library/llama3.2:3b", "hf.co/org/model:Q4_K_M", "localhost:5000/ns/m:t"]
)
def test_real_model_names_are_accepted(name: str) -> None:
    assert parse(b'{"model":"%s"}' % name.encode()).model == name


def test_show_accepts_name_as_well_as_model() -> None:
    assert parse(b'{"name":"llama3.2"}', match_route("/api/show")).model == "llama3.2"


def test_null_options_are_dropped_as_ollama_skips_them() -> None:
    parsed = parse(b'{"model":"m","options":{"temperature":null,"num_ctx":null,"stop":null,"top_k":3}}')
    assert parsed.body["options"] == {"top_k": 3}
    assert parsed.rewritten


def test_options_without_nulls_are_kept_as_sent() -> None:
    parsed = parse(b'{"model":"m","options":{"temperature":0.5,"stop":["x"]}}')
    assert parsed.body["options"] == {"temperature": 0.5, "stop": ["x"]}
    assert not parsed.rewritten


def test_options_ollama_does_not_know_pass_through() -> None:
    assert parse(b'{"model":"m","options":{"my_option":"x"}}').body["options"] == {"my_option": "x"}


@pytest.mark.parametrize(
    "option", ["mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline", "use_mlock"]
)
def test_options_ollama_no_longer_reads_are_not_checked_as_ollama_does_not(option: str) -> None:
    raw = b'{"model":"m","options":{"%s":"x"}}' % option.encode()  # v0.24 answers 200 whatever the value
    assert parse(raw).body["options"] == {option: "x"}


def test_draft_num_predict_is_read_as_the_integer_newer_ollama_reads() -> None:
    with pytest.raises(GatewayError, match="draft_num_predict"):
        parse(b'{"model":"m","options":{"draft_num_predict":"four"}}')


@pytest.mark.parametrize("value", [b'"NaN"', b'"Infinity"', b"1e300", b'"1"', b"true"])
def test_an_openai_temperature_that_is_not_a_finite_number_is_a_400_naming_it(value: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        parse(b'{"model":"m","messages":[],"temperature":%s}' % value, OPENAI_CHAT)
    assert info.value.status == 400 and "temperature" in info.value.message


def test_json_nested_deeper_than_the_writer_accepts_is_a_400_naming_the_limit() -> None:
    for depth in (254, 300, 1023):
        raw = b'{"model":"m","context":' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(GatewayError) as info:
            parse(raw)
        assert info.value.status == 400 and "deeper than 254 levels" in info.value.message


def test_json_nested_as_deep_as_the_writer_accepts_is_served() -> None:
    raw = b'{"model":"m","context":' + b"[" * 253 + b"]" * 253 + b"}"
    assert parse(raw).model == "m"


def test_keys_are_matched_like_gos_encoding_json_and_the_last_wins() -> None:
    parsed = parse(b'{"model":"tiny","Model":"other","KEEP_ALIVE":-1,"\u212aeep_alive":"1h"}')
    assert parsed.model == "other"
    assert parsed.body == {"model": "other", "keep_alive": "1h"}
    assert parsed.rewritten


def test_a_second_spelling_of_options_merges_into_the_first_as_go_decodes_a_map() -> None:
    parsed = parse(b'{"model":"m","options":{"num_predict":1,"num_ctx":8},"Options":{"num_ctx":2048}}')
    assert parsed.body["options"] == {"num_predict": 1, "num_ctx": 2048}


def test_options_under_another_spelling_are_checked() -> None:
    with pytest.raises(GatewayError, match="num_ctx must be between 1 and 131072"):
        parse(b'{"model":"m","OPTIONS":{"num_ctx":999999}}')


def test_option_names_are_exact_as_ollama_looks_them_up() -> None:
    parsed = parse(b'{"model":"m","options":{"NUM_CTX":"big"}}')  # Ollama ignores it, so does the check
    assert parsed.body["options"] == {"NUM_CTX": "big"}


def test_message_keys_are_folded_to_the_fields_ollama_reads() -> None:
    parsed = parse(b'{"model":"m","messages":[{"ROLE":"user","Content":"hi"}]}')
    assert parsed.body["messages"] == [{"role": "user", "content": "hi"}]


def test_keys_no_go_field_matches_are_left_alone() -> None:
    parsed = parse(b'{"model":"m","\u0130mages":1,"Extra":2}')  # Go does not fold the dotted I
    assert parsed.body == {"model": "m", "\u0130mages": 1, "Extra": 2}
    assert not parsed.rewritten
