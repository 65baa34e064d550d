"""The header and cookie scrubbing every forwarded request goes through, on its own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.access.gate import scrub_headers
from edge.access.runtime import SPOOFABLE_IDENTITY_HEADERS, normalise_cookie_name
from edge.forwarding import normalise_header_name

OURS = frozenset(
    normalise_cookie_name(name)
    for name in ("CF_Authorization", "CF_AccessSession", "CF_AccessLogin", "Team_Cookie")
)
HEADERS = SPOOFABLE_IDENTITY_HEADERS | {b"x-team-assertion"}


@pytest.mark.parametrize(
    "name",
    [b"Cf-Access-Jwt-Assertion", b"cf_access_jwt_assertion", b"CF-ACCESS-JWT-ASSERTION",
     b"Cf_Access-Authenticated_User-Email", b"X_Forwarded_Email", b"remote_user",
     b"Remote-User", b"X-Team-Assertion", b"x_team_assertion", b"X-Forwarded-User"],
)
def test_identity_headers_go_in_every_spelling(name: bytes) -> None:
    kept = scrub_headers([(name, b"mallory"), (b"Accept", b"*/*")], HEADERS, OURS)
    assert kept == [(b"Accept", b"*/*")]


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"CF_Authorization=x; a=1", b"a=1"),
        (b"a=1;CF_Authorization=x;b=2", b"a=1;b=2"),
        (b"cf_authorization=x; CF-Authorization=y; CF.Authorization=z; a=1", b"a=1"),
        (b" CF_Authorization =x; a=1", b"a=1"),
        (b"CF_AccessSession=s; CF_AccessLogin=l", None),
        (b"team_cookie=1; Team-Cookie=2; keep=3", b"keep=3"),
        (b"CF_Authorization", None),
        (b"CF_Authorizationx=1", b"CF_Authorizationx=1"),
    ],
)
def test_our_cookies_go_and_others_stay(cookie: bytes, expected: bytes | None) -> None:
    kept = scrub_headers([(b"Cookie", cookie)], HEADERS, OURS)
    assert kept == ([] if expected is None else [(b"Cookie", expected)])


names = st.sampled_from([b"Cf-Access-Jwt-Assertion", b"X-Forwarded-Email", b"Accept",
                         b"X-Custom", b"Remote-User", b"Cookie"])
spelling = st.sampled_from([bytes.upper, bytes.lower, lambda n: n.replace(b"-", b"_"),
                            lambda n: n])
cookie_names = st.sampled_from(["CF_Authorization", "cf-authorization", "CF.AccessSession",
                                "keep", "session", "Team Cookie"])


@given(
    st.lists(st.tuples(names, spelling, st.binary(min_size=0, max_size=20)), max_size=8),
    st.lists(st.tuples(cookie_names, st.text("abc", max_size=5)), max_size=6),
)
def test_nothing_of_ours_survives(
    headers: list[tuple[bytes, object, bytes]], cookies: list[tuple[str, str]]
) -> None:
    raw = [(spell(name), value) for name, spell, value in headers]  # type: ignore[operator]
    raw.append((b"Cookie", "; ".join(f"{n}={v}" for n, v in cookies).encode()))
    kept = scrub_headers(raw, HEADERS, OURS)
    for name, value in kept:
        assert normalise_header_name(name) not in HEADERS
        if normalise_header_name(name) == b"cookie":
            for piece in value.split(b";"):
                assert normalise_cookie_name(piece.split(b"=")[0].decode("latin-1")) not in OURS
    survivors = [n for n, _ in kept if normalise_header_name(n) not in (b"cookie",)]
    expected = [n for n, _ in raw if normalise_header_name(n) in (b"accept", b"x-custom")]
    assert survivors == expected


def test_a_cookie_header_seen_again_is_scrubbed_alike_and_the_table_stays_bounded() -> None:
    from edge.access import gate

    for _ in range(2):  # the second time from the table of scrubbed headers
        assert scrub_headers([(b"Cookie", b"CF_Authorization=x; a=1")], HEADERS, OURS) == [
            (b"Cookie", b"a=1")
        ]
    # The table is per set of cookie names: another set scrubs the same header otherwise.
    assert scrub_headers([(b"Cookie", b"CF_Authorization=x; a=1")], HEADERS, frozenset()) == [
        (b"Cookie", b"CF_Authorization=x; a=1")
    ]
    for n in range(gate._STRIPPED_SEEN_MAX + 10):
        scrub_headers([(b"Cookie", b"n=%d" % n)], HEADERS, OURS)
    assert len(gate._STRIPPED_SEEN) <= gate._STRIPPED_SEEN_MAX
