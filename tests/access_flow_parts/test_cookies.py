"""Cookie attributes are fixed (host-only, HttpOnly, SameSite=Lax, Secure) and parsing is robust."""

from __future__ import annotations

import pytest

from edge.access.sessions import build_cookie, cookie_values, expired_cookie, parse_cookies


def attributes(header: str) -> list[str]:
    return [part.strip() for part in header.split(";")]


def test_cookie_carries_the_protective_attributes() -> None:
    header = build_cookie("CF_Authorization", "abc.def-ghi_", max_age=3600, secure=True)
    parts = attributes(header)
    assert parts[0] == "CF_Authorization=abc.def-ghi_"
    assert {"Path=/", "Max-Age=3600", "HttpOnly", "SameSite=Lax", "Secure"} <= set(parts)
    assert not any(part.lower().startswith("domain") for part in parts)


def test_secure_can_be_turned_off_for_plain_http_demos() -> None:
    parts = attributes(build_cookie("s", "v", max_age=5, secure=False, path="/cdn-cgi/access"))
    assert "Secure" not in parts
    assert "Path=/cdn-cgi/access" in parts
    assert "HttpOnly" in parts


def test_expired_cookie_clears_it() -> None:
    parts = attributes(expired_cookie("s", secure=True))
    assert parts[0] == "s="
    assert "Max-Age=0" in parts


@pytest.mark.parametrize(
    ("name", "value", "path"),
    [
        ("bad name", "v", "/"),
        ("n;x", "v", "/"),
        ("", "v", "/"),
        ("n", "v;Domain=evil.com", "/"),
        ("n", "v\r\nSet-Cookie: x=y", "/"),
        ("n", 'quote"d', "/"),
        ("n", "sp ace", "/"),
        ("n", "v", "relative"),
        ("n", "v", "/;Domain=evil.com"),
        ("n", "x" * 5000, "/"),
    ],
)
def test_header_injection_through_cookie_parts_is_refused(name: str, value: str, path: str) -> None:
    with pytest.raises(ValueError, match=r"invalid cookie|cannot carry"):
        build_cookie(name, value, max_age=1, secure=True, path=path)


def test_negative_max_age_is_refused() -> None:
    with pytest.raises(ValueError, match="max_age"):
        build_cookie("n", "v", max_age=-1, secure=True)


def test_parse_first_value_wins_across_headers() -> None:
    cookies = parse_cookies(["a=1; b=2; a=3", b"b=4; c=5"])
    assert cookies == {"a": "1", "b": "2", "c": "5"}


def test_parse_skips_junk_without_failing() -> None:
    cookies = parse_cookies(
        [
            ';;; =novalue; noequals; bad name=1; ok=yes; q="quoted"; ctl=a\x01b; '
            "  spaced  =  v  ; utf=\u00e9; empty="
        ]
    )
    assert cookies == {"ok": "yes", "q": "quoted", "spaced": "v", "empty": ""}


def test_parse_caps_the_number_of_cookies() -> None:
    header = "; ".join(f"c{i}={i}" for i in range(500))
    cookies = parse_cookies([header])
    assert len(cookies) == 100
    assert "c99" in cookies
    assert "c100" not in cookies


def test_parse_ignores_oversized_values() -> None:
    assert parse_cookies(["big=" + "x" * 5000 + "; small=1"]) == {"small": "1"}


def test_cookie_values_lists_every_copy_in_order() -> None:
    headers = ["s=planted; other=1", "s=ours"]
    assert cookie_values(headers, "s") == ["planted", "ours"]
    assert cookie_values(headers, "missing") == []


def test_a_header_seen_again_gives_the_same_values_and_the_table_stays_bounded() -> None:
    from edge.access import cookies

    header = "s=first; t=2; s=second"
    assert cookie_values([header], "s") == ["first", "second"]
    assert cookie_values([header], "s") == ["first", "second"]  # from the table this time
    assert cookie_values([header, "s=third"], "s") == ["first", "second", "third"]
    # The cap on cookies read counts across headers, remembered or not.
    many = "; ".join(f"c{n}=v" for n in range(cookies.MAX_COOKIES - 1))
    assert cookie_values([many, "s=1; s=2; s=3"], "s") == ["1"]
    assert cookie_values([many, "s=1; s=2; s=3"], "s") == ["1"]
    huge = "s=" + "x" * 4000 + "; " + "; ".join(f"p{n}=" + "y" * 100 for n in range(60))
    assert cookie_values([huge], "s") == ["x" * 4000]
    assert huge not in cookies._PAIRS_SEEN  # too large to keep
    for n in range(cookies._PAIRS_SEEN_MAX + 10):
        cookie_values([f"n={n}"], "n")
    assert len(cookies._PAIRS_SEEN) <= cookies._PAIRS_SEEN_MAX
