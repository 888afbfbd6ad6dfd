from __future__ import annotations

from dataclasses import dataclass

import pytest

from ollama_asgi.errors import ConfigError
from ollama_asgi.settings_types import PositiveInt, PositiveSeconds, check, field_types


@dataclass(frozen=True, slots=True)
class Part:
    count: PositiveInt
    wait: PositiveSeconds = 1.0
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(self, owner="Part.")


def test_construction_holds_a_field_to_its_bounds_and_names_it_with_its_owner() -> None:
    with pytest.raises(ConfigError) as info:
        Part(count=0)
    assert info.value.field == "Part.count"
    assert info.value.detail == "must be at least 1, got 0"


def test_construction_gives_each_field_its_declared_type() -> None:
    part = Part(count=2, wait=3, tags=["a"])  # type: ignore[arg-type]
    assert (type(part.wait), part.tags) == (float, ("a",))


def test_a_duration_must_be_finite() -> None:
    with pytest.raises(ConfigError, match="finite duration"):
        Part(count=1, wait=float("inf"))


def test_text_for_a_number_points_at_the_loaders() -> None:
    with pytest.raises(ConfigError, match="from_mapping"):
        Part(count="4")  # type: ignore[arg-type]


def test_the_field_types_keep_their_bounds() -> None:
    assert field_types(Part)["count"] == PositiveInt
