"""Over HTTPS every Access cookie is Secure, and tokens name an https issuer."""

from __future__ import annotations

import ssl
from http.cookies import SimpleCookie
from pathlib import Path

import jwt
import pytest
import trio
import trustme

from .harness import AUTH, PREFIX, hidden_fields, location, new_visitor, otp_inbox, start_stack

pytestmark = pytest.mark.e2e


def cookie_lines(lines: list[str]) -> dict[str, dict[str, str]]:
    found = {}
    for line in lines:
        jar: SimpleCookie = SimpleCookie()
        jar.load(line)
        for name, morsel in jar.items():
            found[name] = {key: str(value) for key, value in morsel.items() if value}
    return found


async def test_cookies_are_secure_when_the_edge_serves_https(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("app1.localhost", AUTH)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    stack = await start_stack(nursery, tmp_path / "edge", ["app1.localhost"], tls=(cert, key))
    await stack.add_idp({"name": "pin", "type": "otp", "delivery": "log"})
    await stack.add_app({"name": "one", "domain": "app1.localhost", "idps": ["pin"]},
                        [{"name": "all", "action": "allow", "include": [{"everyone": True}]}])
    port = int(stack.edge.listeners["public_tls"].rsplit(":", 1)[1])
    context = ssl.create_default_context()
    ca.configure_trust(context)
    seen: dict[str, dict[str, str]] = {}
    with otp_inbox() as inbox:
        async with new_visitor(context) as visitor:
            start = await visitor.get(f"https://app1.localhost:{port}/")
            login = location(start)
            assert login.startswith(f"https://{AUTH}:{port}{PREFIX}/login")
            form_page = await visitor.get(login)
            seen |= cookie_lines(form_page.headers.get_list("set-cookie"))
            sent = await visitor.post(f"https://{AUTH}:{port}{PREFIX}/otp/email",
                                      data={**hidden_fields(form_page.text), "email": "a@b.co"})
            answer = await visitor.post(f"https://{AUTH}:{port}{PREFIX}/otp/code",
                                        data={**hidden_fields(sent.text), "code": inbox.last})
            seen |= cookie_lines(answer.headers.get_list("set-cookie"))
            handoff = await visitor.get(location(answer))
            seen |= cookie_lines(handoff.headers.get_list("set-cookie"))
            page = await visitor.get(location(handoff))
    for name in ("CF_AccessLogin", "CF_AccessSession", "CF_Authorization"):
        assert seen[name]["secure"], name
        assert seen[name]["httponly"], name
        assert seen[name]["samesite"] == "Lax"
        assert "domain" not in seen[name]
    environ = page.json()["environ"]
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"
    token = environ["HTTP_CF_ACCESS_JWT_ASSERTION"]
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == f"https://{AUTH}"
