from __future__ import annotations

import pytest

from ollama_asgi.errors import ConfigError
from ollama_asgi.settings_text import read_as, read_pairs, runner_option_kind, suggest, within
from ollama_asgi.settings_types import PositiveSeconds


@pytest.mark.parametrize(("text", "value"), [("4", 4), ("1_000", 1000), ("512k", 512 * 1024), ("24GiB", 24 * 1024**3)])
def test_integers_read_with_binary_size_suffixes(text: str, value: int) -> None:
    assert read_as(text, int, "vram_budget") == value


@pytest.mark.parametrize(("text", "value"), [("on", True), ("Yes", True), ("0", False), ("false", False)])
def test_booleans_read_from_words(text: str, value: bool) -> None:
    assert read_as(text, bool, "lifecycle") is value


def test_a_word_that_is_no_boolean_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        read_as("maybe", bool, "lifecycle")
    assert info.value.field == "lifecycle"


def test_a_duration_type_reads_go_style_text() -> None:
    assert read_as("1m30s", PositiveSeconds, "lease_ttl") == 90.0


@pytest.mark.parametrize("text", ['["a", "b"]', "a, b", "a,,b"])
def test_a_list_reads_from_json_or_commas(text: str) -> None:
    assert read_as(text, tuple[str, ...], "admin_scopes") == ("a", "b")


def test_an_optional_setting_reads_empty_text_as_none() -> None:
    assert read_as("", int | None, "vram_budget") is None


@pytest.mark.parametrize("value", ["a=1, b=2", {"a": 1, "b": 2}, [("a", 1), ["b", 2]], '{"a": 1, "b": 2}'])
def test_pairs_read_from_text_mappings_and_lists(value: object) -> None:
    assert [(name, str(raw)) for name, raw in read_pairs(value, "model_max_num_ctx")] == [("a", "1"), ("b", "2")]


def test_a_parts_error_is_reported_as_its_settings() -> None:
    def build() -> None:
        raise ConfigError("BackendSpec.weight", "must be at least 0.001")

    with pytest.raises(ConfigError) as info:
        within("upstreams", build)
    assert (info.value.field, info.value.detail) == ("upstreams", "weight: must be at least 0.001")


def test_a_suggestion_is_the_closest_name_or_else_all_of_them() -> None:
    assert suggest("paralel", ["parallel", "auth"]) == "; did you mean 'parallel'?"
    assert suggest("upstream", ["upstreams"], "OLLAMA_ASGI_") == "; did you mean 'OLLAMA_ASGI_UPSTREAMS'?"
    assert suggest("zzz", ["parallel", "auth"]) == "; valid settings are: parallel, auth"


def test_a_runner_option_has_the_kind_ollama_reads_and_num_ctx_is_none() -> None:
    assert (runner_option_kind("num_thread", "runner_options"), runner_option_kind("use_mmap", "runner_options")) == (
        "int",
        "bool",
    )
    with pytest.raises(ConfigError, match="not a runner option"):
        runner_option_kind("num_ctx", "runner_options")
