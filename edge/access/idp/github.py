"""GitHub OAuth2: a person signs in with their GitHub account; orgs and teams become groups.

GitHub issues no ID token, so the identity is read from the REST API with the short-lived
access token right after the code exchange, and the token is then dropped (never returned,
stored or logged). What becomes of it:

* ``sub`` is the numeric user id (logins can be renamed; ids cannot);
* the e-mail is the account's *primary* address from ``/user/emails``; ``email_verified`` is
  GitHub's own flag for that address, so an unverified primary never matches an e-mail rule;
* groups are the login of each organisation (``acme``) and ``org/team-slug`` for each team
  (``acme/platform``), as GitHub reports them.

PKCE S256 is sent too (GitHub supports it); the login state's ``nonce`` has no use here because
there is no ID token to carry it. Pagination follows ``Link: rel="next"`` only while it stays
under the configured API base, so a hostile or broken answer can never make the edge send the
access token elsewhere. Base URLs are injectable for GitHub Enterprise Server and for tests.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

import httpx

from edge.access.identity import Identity
from edge.access.idp import (
    HttpClientFactory,
    IdpLoginRefused,
    IdpUnavailable,
    default_http_client,
    provider_error_code,
    read_json,
    read_json_object,
)
from edge.access.tokens import Clock

logger = logging.getLogger(__name__)

__all__ = ["GithubProvider"]

GITHUB_WEB = "https://github.com"
GITHUB_API = "https://api.github.com"
DEFAULT_SCOPES = ("read:user", "user:email", "read:org")
MAX_PAGES = 10
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_MAX_CODE_LENGTH = 512


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


class GithubProvider:
    """One configured GitHub OAuth app (the ``[[idp]] type = "github"`` entry)."""

    def __init__(
        self,
        name: str,
        client_id: str,
        client_secret: str,
        *,
        http: HttpClientFactory = default_http_client,
        clock: Clock,
        web_base: str = GITHUB_WEB,
        api_base: str = GITHUB_API,
        scopes: Sequence[str] = DEFAULT_SCOPES,
        max_pages: int = MAX_PAGES,
    ) -> None:
        self._name = name
        self.client_id = client_id
        self._client_secret = client_secret
        self._http = http
        self._clock = clock
        self.web_base = web_base.rstrip("/")
        self.api_base = api_base.rstrip("/")
        self.scopes = tuple(scopes)
        self._max_pages = max_pages

    def __repr__(self) -> str:
        return f"GithubProvider(name={self._name!r}, web_base={self.web_base!r})"

    @property
    def name(self) -> str:
        return self._name

    async def prepare(self) -> None:
        """Nothing to discover: GitHub's endpoints are fixed."""

    def authorization_url(
        self,
        *,
        state: str,
        nonce: str,
        code_challenge: str,
        redirect_uri: str,
        prompt: str | None = None,
    ) -> str:
        """GitHub's authorize URL; any ``prompt`` becomes GitHub's ``select_account``."""
        params = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "allow_signup": "false",
        }
        if prompt is not None:
            params["prompt"] = "select_account"
        return f"{self.web_base}/login/oauth/authorize?{urlencode(params)}"

    def check_callback(self, params: Mapping[str, str]) -> str:
        if "error" in params:
            raise IdpLoginRefused("provider_refused", provider_error_code(params) or "error")
        code = params.get("code", "")
        if not code or len(code) > _MAX_CODE_LENGTH:
            raise IdpLoginRefused("missing_code", http_status=400)
        return code

    async def exchange(
        self, *, code: str, code_verifier: str, redirect_uri: str, expected_nonce: str
    ) -> Identity:
        """Redeem the code, read the account, orgs and teams, and forget the access token."""
        async with self._http() as client:
            access_token = await self._redeem(client, code, code_verifier, redirect_uri)
            headers = {
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            }
            user = await self._get(client, f"{self.api_base}/user", headers)
            if not isinstance(user, dict) or not isinstance(user.get("id"), int):
                raise IdpUnavailable("bad_response", "/user has no numeric id")
            emails = await self._get_all(client, "/user/emails", headers)
            orgs = await self._get_all(client, "/user/orgs", headers)
            teams = await self._get_all(client, "/user/teams", headers)
        email, verified = self._primary_email(emails)
        identity = Identity(
            sub=str(user["id"]),
            email=email,
            email_verified=verified,
            name=_string(user.get("name")) or _string(user.get("login")) or str(user["id"]),
            groups=self._groups(orgs, teams),
            idp=self._name,
            issued_at=self._clock(),
        )
        logger.info("idp=%s github login verified for sub=%s", self._name, identity.sub)
        return identity

    async def _redeem(
        self, client: httpx.AsyncClient, code: str, code_verifier: str, redirect_uri: str
    ) -> str:
        form = {
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        url = f"{self.web_base}/login/oauth/access_token"
        try:
            async with client.stream(
                "POST", url, data=form, headers={"Accept": "application/json"}
            ) as answer:
                status = answer.status_code
                body = await read_json_object(answer, what="GitHub token response")
        except httpx.HTTPError as error:
            raise IdpUnavailable("unreachable", f"GitHub: {type(error).__name__}") from None
        error_code = provider_error_code({"error": _string(body.get("error"))})
        if error_code == "bad_verification_code":
            raise IdpLoginRefused("code_rejected", "GitHub refused the code", http_status=400)
        if error_code in ("incorrect_client_credentials", "redirect_uri_mismatch"):
            raise IdpUnavailable("client_rejected", error_code, permanent=True)
        token = body.get("access_token")
        if status != 200 or error_code or not isinstance(token, str) or not token:
            raise IdpUnavailable("token_endpoint_error", f"HTTP {status} {error_code}".strip())
        return token

    async def _get(self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> object:
        document, _next = await self._get_page(client, url, headers)
        return document

    async def _get_page(
        self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]
    ) -> tuple[object, str | None]:
        try:
            async with client.stream("GET", url, headers=dict(headers)) as answer:
                if answer.status_code != 200:
                    raise IdpUnavailable(
                        "provider_http_error", f"GitHub API HTTP {answer.status_code}"
                    )
                document = await read_json(answer, what="GitHub API response")
                link = answer.headers.get("link", "")
        except httpx.HTTPError as error:
            raise IdpUnavailable("unreachable", f"GitHub API: {type(error).__name__}") from None
        match = _NEXT_LINK.search(link)
        next_url = match.group(1) if match else None
        if next_url is not None and not next_url.startswith(self.api_base + "/"):
            logger.warning("idp=%s ignored a pagination link outside the API base", self._name)
            next_url = None
        return document, next_url

    async def _get_all(
        self, client: httpx.AsyncClient, path: str, headers: Mapping[str, str]
    ) -> list[dict[str, object]]:
        items: list[dict[str, object]] = []
        url: str | None = f"{self.api_base}{path}?per_page=100"
        for _ in range(self._max_pages):
            if url is None:
                break
            document, url = await self._get_page(client, url, headers)
            if not isinstance(document, list):
                raise IdpUnavailable("bad_response", f"{path} is not a list")
            items.extend(item for item in document if isinstance(item, dict))
        return items

    @staticmethod
    def _primary_email(emails: list[dict[str, object]]) -> tuple[str, bool]:
        for entry in emails:
            if entry.get("primary") is True and isinstance(entry.get("email"), str):
                return str(entry["email"]), entry.get("verified") is True
        return "", False

    @staticmethod
    def _groups(orgs: list[dict[str, object]], teams: list[dict[str, object]]) -> tuple[str, ...]:
        groups: dict[str, None] = {}
        for org in orgs:
            login = _string(org.get("login"))
            if login:
                groups[login] = None
        for team in teams:
            organization = team.get("organization")
            org_login = _string(organization.get("login")) if isinstance(organization, dict) else ""
            slug = _string(team.get("slug"))
            if org_login and slug:
                groups[f"{org_login}/{slug}"] = None
        return tuple(groups)
