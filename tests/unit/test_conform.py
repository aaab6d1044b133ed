"""The one annotation-conformance check shared by settings and provider options."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from taskfabric.conform import Mismatch, conform, describe


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (3, float, 3.0),
        (True, bool, True),
        ([1, 2], tuple[int, ...], (1, 2)),
        (["a", 2], tuple[str, int], ("a", 2)),
        ("~/x", Path, Path("~/x").expanduser()),
        (None, int | None, None),
        ("safe", Literal["fast", "safe"], "safe"),
        ({1: "v"}, dict[str, str], {"1": "v"}),
        ({"k": [1.5]}, dict[str, list[float]], {"k": [1.5]}),
        (object, Any, object),
        ("anything", None, "anything"),
    ],
)
def test_values_that_conform(value: Any, annotation: Any, expected: Any) -> None:
    assert conform(value, annotation) == expected


@pytest.mark.parametrize(
    ("value", "annotation", "where", "words"),
    [
        ("4", int, "", "an integer"),
        (True, int, "", "an integer"),
        ("yes", bool, "", "true or false"),
        (["a"], str | None, "", "a string or null"),
        ("a", list[str], "", "a list"),
        (["a", 3], list[str], "[1]", "a string"),
        ({"k": "x"}, dict[str, int], ".k", "an integer"),
        ("turbo", Literal["fast", "safe"], "", "one of 'fast', 'safe'"),
        ([1, 2, 3], tuple[int, int], "", "a list of 2 items (an integer, an integer)"),
        (3, Path, "", "a path"),
        ("x", bytes, "", "a bytes"),
    ],
)
def test_a_mismatch_says_what_was_expected_and_where(value: Any, annotation: Any, where: str, words: str) -> None:
    with pytest.raises(Mismatch) as caught:
        conform(value, annotation)
    assert (caught.value.where, caught.value.expected) == (where, words)


def test_a_nested_hook_handles_what_conform_does_not_know() -> None:
    class Section:
        pass

    def nested(annotation: Any, value: Any, where: str) -> Any:
        return (annotation.__name__, value, where) if annotation is Section else NotImplemented

    assert conform([{"a": 1}], list[Section], nested=nested) == [("Section", {"a": 1}, "[0]")]


def test_describe_names_containers_in_words() -> None:
    assert describe(list[str]) == "a list (of a string)"
    assert describe(dict[str, int] | None) == "a mapping (of a string to an integer) or null"
