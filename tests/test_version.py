"""Agent release versions: parsing, formatting, and ordering where a beta sorts before its release."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollhouse.control.version import Version, VersionParseError, parse_version


@pytest.mark.parametrize(("text", "expected"), [
    ("v1.2.3", Version(1, 2, 3)),
    ("v1.2.3-beta.4", Version(1, 2, 3, 4)),
    ("v0.0.0", Version(0, 0, 0)),
    (" v10.20.30 ", Version(10, 20, 30)),
    ("v1.2.3-beta.0", Version(1, 2, 3, 0)),
])
def test_parse(text: str, expected: Version) -> None:
    assert parse_version(text) == expected
    assert str(parse_version(text)) == text.strip()


@pytest.mark.parametrize("text", ["1.2.3", "v1.2", "v1.2.3.4", "v1.2.3-rc.1", "v1.2.3-beta", "v01.2.3",
                                  "v1.2.3-beta.04", "V1.2.3", "v1.2.3 beta.1", "", "latest", "v١.2.3"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(VersionParseError, match=re.escape('is not vN.M.K or vN.M.K-beta.X; example: "v1.2.3"')):
        parse_version(text)


@pytest.mark.parametrize("ordered", [
    ["v1.2.3-beta.1", "v1.2.3-beta.2", "v1.2.3-beta.10", "v1.2.3", "v1.2.4-beta.1", "v1.2.4", "v1.10.0",
     "v2.0.0-beta.1", "v2.0.0"],
])
def test_ordering(ordered: list[str]) -> None:
    versions = [parse_version(v) for v in ordered]
    assert sorted(reversed(versions)) == versions
    assert max(versions) == parse_version("v2.0.0")
    assert parse_version("v1.2.3-beta.9") < parse_version("v1.2.3") <= parse_version("v1.2.3")


versions = st.builds(Version, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
                     st.one_of(st.none(), st.integers(0, 10**6)))


@given(versions)
def test_round_trip(v: Version) -> None:
    assert parse_version(str(v)) == v
    assert v.is_beta is (v.beta is not None)


@given(versions, versions)
def test_order_is_total_and_betas_precede_their_release(a: Version, b: Version) -> None:
    assert (a < b) + (a == b) + (a > b) == 1
    assert Version(a.major, a.minor, a.patch, 7) < Version(a.major, a.minor, a.patch)


@given(st.text())
def test_garbage_raises_only_the_typed_error(text: str) -> None:
    try:
        v = parse_version(text)
    except VersionParseError:
        return
    assert parse_version(str(v)) == v
