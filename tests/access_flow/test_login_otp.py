"""Signing in with a one-time PIN sent through a real SMTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from .harness import AUTH, PREFIX, Stack, follow, hidden_fields, location, new_visitor, start_stack
from .mail import SmtpSink

pytestmark = pytest.mark.e2e


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
async def mailed(nursery: trio.Nursery, tmp_path: Path, sink: SmtpSink) -> Stack:
    stack = await start_stack(nursery, tmp_path / "edge", ["app1.localhost"])
    await stack.add_idp({
        "name": "mail", "type": "otp", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
        "smtp_from": "access@edge.test", "smtp_starttls": False, "max_attempts": 3,
    })
    await stack.add_app(
        {"name": "wiki", "domain": "app1.localhost", "idps": ["mail"]},
        [{"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
    )
    return stack


async def ask_for_code(
    stack: Stack, visitor: httpx.AsyncClient, email: str
) -> tuple[dict[str, str], httpx.Response]:
    login = location(await visitor.get(stack.url("app1.localhost", "/page")))
    form_page = await visitor.get(login)
    assert form_page.status_code == 200
    assert 'action="/cdn-cgi/access/otp/email"' in form_page.text
    sent = await visitor.post(stack.url(AUTH, f"{PREFIX}/otp/email"),
                              data={**hidden_fields(form_page.text), "email": email})
    return hidden_fields(sent.text), sent


async def test_a_code_from_the_mailbox_signs_the_person_in(
    mailed: Stack, sink: SmtpSink
) -> None:
    async with new_visitor() as visitor:
        form, sent = await ask_for_code(mailed, visitor, "carol@corp.com")
        assert sent.status_code == 200
        assert "carol@corp.com" in sent.text
        code = sink.code_for("carol@corp.com")
        wrong = "0" * 6 if code != "0" * 6 else "1" * 6
        retry = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"),
                                   data={**form, "code": wrong})
        assert retry.status_code == 401
        assert "not right" in retry.text
        answer = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"),
                                    data={**hidden_fields(retry.text), "code": code})
        assert urlsplit(location(answer)).path == f"{PREFIX}/authorized"
        page = await follow(visitor, answer)
    claims = page.json()["assertion"]["claims"]
    assert claims["email"] == "carol@corp.com"
    assert claims["idp"] == "mail"
    assert page.json()["target"] == "/page"


async def test_a_code_works_once(mailed: Stack, sink: SmtpSink) -> None:
    async with new_visitor() as visitor:
        form, _ = await ask_for_code(mailed, visitor, "dan@corp.com")
        data = {**form, "code": sink.code_for("dan@corp.com")}
        first = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"), data=data)
        assert first.status_code == 302
        again = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"), data=data)
        assert again.status_code in (400, 401, 403)


async def test_guessing_locks_the_challenge(mailed: Stack, sink: SmtpSink) -> None:
    async with new_visitor() as visitor:
        form, _ = await ask_for_code(mailed, visitor, "gus@corp.com")
        code = sink.code_for("gus@corp.com")
        wrong = "0" * 6 if code != "0" * 6 else "1" * 6
        for _ in range(3):
            answer = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"),
                                        data={**form, "code": wrong})
        assert answer.status_code == 429
        late = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"),
                                  data={**form, "code": code})
        assert late.status_code in (403, 429)


async def test_the_form_is_bound_to_the_browser_that_started(
    mailed: Stack, sink: SmtpSink
) -> None:
    async with new_visitor() as victim, new_visitor() as attacker:
        form, _ = await ask_for_code(mailed, victim, "vic@corp.com")
        stolen = {**form, "code": sink.code_for("vic@corp.com")}
        # Another browser (no login-state cookie) cannot finish this login, even with the code.
        refused = await attacker.post(mailed.url(AUTH, f"{PREFIX}/otp/code"), data=stolen)
        assert refused.status_code == 403
        # Nor can it ask for codes with a form it did not get itself.
        again = await attacker.post(mailed.url(AUTH, f"{PREFIX}/otp/email"),
                                    data={**form, "email": "vic@corp.com"})
        assert again.status_code == 403
        assert len(sink.messages) == 1


async def test_an_address_outside_the_policy_is_denied_after_the_code(
    mailed: Stack, sink: SmtpSink
) -> None:
    async with new_visitor() as visitor:
        form, _ = await ask_for_code(mailed, visitor, "zed@elsewhere.org")
        answer = await visitor.post(mailed.url(AUTH, f"{PREFIX}/otp/code"),
                                    data={**form, "code": sink.code_for("zed@elsewhere.org")})
    assert answer.status_code == 403
    assert "zed@elsewhere.org" in answer.text
    assert "no_policy_matched" in answer.text
