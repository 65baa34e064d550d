"""Any OpenID Connect provider, found by discovery: authorization code flow with PKCE S256.

What is verified, and why:

* discovery must name exactly the configured issuer, or a provider could claim to speak for
  another one (mix-up); endpoints must be https, or http only on loopback hosts;
* the callback's ``iss`` parameter (RFC 9207), when present, must be our issuer; when the
  provider advertises that it sends one, it must be there;
* the ID token comes straight from the token endpoint (client_secret_basic) and is still
  verified: signature against the provider's JWKS (RS256 or ES256 only; the key is chosen by
  ``kid`` among the provider's keys, never from URLs in the token), ``iss``, ``aud`` (and
  ``azp`` when there are several audiences), ``exp``/``iat`` against the injected clock, and
  ``nonce`` compared in constant time with the one bound to the browser's login state;
* an unknown ``kid`` triggers one JWKS refresh, at most once per ``jwks_refresh_interval``, so
  key rotation at the provider works and a stream of bad tokens cannot make us hammer it.

``email_verified`` is passed through; a provider that does not send it counts as unverified
unless ``trust_email_without_verified_claim`` says otherwise (some enterprise providers only
ever issue verified addresses and omit the claim). Groups come from ``groups_claim``: a list
of strings, or a single string meaning one group.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt

from edge.access.identity import Identity
from edge.access.idp import (
    HttpClientFactory,
    IdpLoginRefused,
    IdpUnavailable,
    default_http_client,
    provider_error_code,
    read_json_object,
)
from edge.access.tokens import Clock

logger = logging.getLogger(__name__)

__all__ = ["OidcEndpoints", "OidcProvider"]

ID_TOKEN_ALGORITHMS = ("RS256", "ES256")
_KEY_TYPE_FOR = {"RS256": "RSA", "ES256": "EC"}
_CODE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_MAX_CODE_LENGTH = 2048
DISCOVERY_TTL = 3600.0
DISCOVERY_RETRY_INTERVAL = 10.0
JWKS_REFRESH_INTERVAL = 60.0
CLOCK_LEEWAY = 60.0


@dataclass(frozen=True, slots=True)
class OidcEndpoints:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    sends_iss_parameter: bool


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(document: Mapping[str, object], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise IdpUnavailable("bad_discovery", f"discovery has no {name}", permanent=True)
    parts = urlsplit(value)
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        raise IdpUnavailable(
            "bad_discovery", f"{name} must be an https URL (http only on loopback)", permanent=True
        )
    return value


def _basic_credentials(client_id: str, client_secret: str) -> str:
    """client_secret_basic as RFC 6749 §2.3.1 says: form-encode each part, then base64."""
    pair = f"{urlencode({'': client_id})[1:]}:{urlencode({'': client_secret})[1:]}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _string_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str) and item)
    return ()


class OidcProvider:
    """One configured OpenID Connect provider (the ``[[idp]] type = "oidc"`` entry)."""

    def __init__(
        self,
        name: str,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        groups_claim: str = "groups",
        scopes: Sequence[str] = ("openid", "email", "profile"),
        http: HttpClientFactory = default_http_client,
        clock: Clock,
        trust_email_without_verified_claim: bool = False,
        jwks_refresh_interval: float = JWKS_REFRESH_INTERVAL,
        discovery_ttl: float = DISCOVERY_TTL,
    ) -> None:
        if "openid" not in scopes:
            raise ValueError("OpenID Connect scopes must include 'openid'")
        self._name = name
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.groups_claim = groups_claim
        self.scopes = tuple(scopes)
        self._http = http
        self._clock = clock
        self._trust_email = trust_email_without_verified_claim
        self._jwks_refresh_interval = jwks_refresh_interval
        self._discovery_ttl = discovery_ttl
        self._endpoints: OidcEndpoints | None = None
        self._discovered_at = 0.0
        self._last_failure: tuple[float, IdpUnavailable] | None = None
        self._jwks: list[dict[str, Any]] = []
        self._jwks_fetched_at: float | None = None

    def __repr__(self) -> str:
        return f"OidcProvider(name={self._name!r}, issuer={self.issuer!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def endpoints(self) -> OidcEndpoints | None:
        return self._endpoints

    # discovery

    async def prepare(self) -> None:
        """Discover when nothing is cached or the cache is stale.

        After a failure the provider is not asked again for ``DISCOVERY_RETRY_INTERVAL``
        seconds: logins fail fast with the same error instead of piling onto a provider that
        is down. Known endpoints keep serving while a rediscovery fails.
        """
        now = self._clock()
        if self._endpoints is not None and now - self._discovered_at < self._discovery_ttl:
            return
        failure = self._last_failure
        if failure is not None and now - failure[0] < DISCOVERY_RETRY_INTERVAL:
            if self._endpoints is None:
                raise failure[1]
            return
        try:
            await self.discover()
        except IdpUnavailable as error:
            self._last_failure = (now, error)
            if self._endpoints is None:
                raise
            logger.warning("idp=%s rediscovery failed; keeping known endpoints", self._name)
        else:
            self._last_failure = None

    async def discover(self) -> OidcEndpoints:
        """Fetch and check the discovery document and the JWKS; cached by ``prepare``."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        async with self._http() as client:
            document = await self._get_json(client, url, "discovery document")
            if document.get("issuer") != self.issuer:
                raise IdpUnavailable(
                    "issuer_mismatch",
                    f"discovery names issuer {str(document.get('issuer'))[:200]!r}",
                    permanent=True,
                )
            methods = document.get("code_challenge_methods_supported")
            if isinstance(methods, list) and "S256" not in methods:
                raise IdpUnavailable("bad_discovery", "provider does not offer PKCE S256")
            endpoints = OidcEndpoints(
                authorization_endpoint=_check_endpoint(document, "authorization_endpoint"),
                token_endpoint=_check_endpoint(document, "token_endpoint"),
                jwks_uri=_check_endpoint(document, "jwks_uri"),
                sends_iss_parameter=document.get("authorization_response_iss_parameter_supported")
                is True,
            )
            await self._fetch_jwks(client, endpoints.jwks_uri)
        self._endpoints = endpoints
        self._discovered_at = self._clock()
        logger.info("idp=%s discovered %s", self._name, self.issuer)
        return endpoints

    async def _get_json(self, client: httpx.AsyncClient, url: str, what: str) -> dict[str, object]:
        try:
            async with client.stream("GET", url, headers={"Accept": "application/json"}) as answer:
                if answer.status_code != 200:
                    raise IdpUnavailable(
                        "provider_http_error", f"{what}: HTTP {answer.status_code}"
                    )
                return await read_json_object(answer, what=what)
        except httpx.HTTPError as error:
            raise IdpUnavailable("unreachable", f"{what}: {type(error).__name__}") from None

    async def _fetch_jwks(self, client: httpx.AsyncClient, jwks_uri: str) -> None:
        document = await self._get_json(client, jwks_uri, "JWKS")
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise IdpUnavailable("bad_jwks", "JWKS has no keys list")
        self._jwks = [key for key in keys if isinstance(key, dict)]
        self._jwks_fetched_at = self._clock()

    # the redirect to the provider and back

    def authorization_url(
        self,
        *,
        state: str,
        nonce: str,
        code_challenge: str,
        redirect_uri: str,
        prompt: str | None = None,
    ) -> str:
        """Where to send the browser: code flow, PKCE S256 always, state and nonce bound."""
        if self._endpoints is None:
            raise IdpUnavailable("not_discovered", "call prepare() first")
        if not _CODE_CHALLENGE.fullmatch(code_challenge):
            raise ValueError("code_challenge must be an S256 challenge (43 base64url characters)")
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if prompt is not None:
            params["prompt"] = prompt
        endpoint = self._endpoints.authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"

    def check_callback(self, params: Mapping[str, str]) -> str:
        """The code from the callback query, after the provider's error and ``iss`` checks."""
        if "error" in params:
            error = provider_error_code(params)
            raise IdpLoginRefused("provider_refused", error or "error")
        iss = params.get("iss")
        sends_iss = self._endpoints is not None and self._endpoints.sends_iss_parameter
        if (iss is None and sends_iss) or (iss is not None and iss != self.issuer):
            raise IdpLoginRefused("issuer_mismatch", "callback iss is not this provider")
        code = params.get("code", "")
        if not code or len(code) > _MAX_CODE_LENGTH:
            raise IdpLoginRefused("missing_code", http_status=400)
        return code

    async def exchange(
        self, *, code: str, code_verifier: str, redirect_uri: str, expected_nonce: str
    ) -> Identity:
        """Redeem the code at the token endpoint and turn the verified ID token into an Identity."""
        await self.prepare()
        endpoints = self._endpoints
        assert endpoints is not None
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        headers = {
            "Authorization": _basic_credentials(self.client_id, self._client_secret),
            "Accept": "application/json",
        }
        async with self._http() as client:
            try:
                async with client.stream(
                    "POST", endpoints.token_endpoint, data=form, headers=headers
                ) as answer:
                    status = answer.status_code
                    body = await read_json_object(answer, what="token response")
            except httpx.HTTPError as error:
                raise IdpUnavailable(
                    "unreachable", f"token endpoint: {type(error).__name__}"
                ) from None
            if status != 200:
                self._raise_token_error(status, body)
            id_token = body.get("id_token")
            if not isinstance(id_token, str) or not id_token:
                raise IdpUnavailable("no_id_token", "token response has no id_token")
            claims = await self._verify_id_token(client, id_token, endpoints)
        # The access and refresh tokens in ``body`` are dropped here on purpose.
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode("utf-8"), expected_nonce.encode("utf-8")
        ):
            raise IdpLoginRefused("nonce_mismatch", "ID token nonce is not this login's")
        identity = self._identity(claims)
        logger.info("idp=%s login verified for sub=%s", self._name, identity.sub)
        return identity

    @staticmethod
    def _raise_token_error(status: int, body: Mapping[str, object]) -> None:
        error = provider_error_code({"error": str(body.get("error", ""))})
        if status == 400 and error == "invalid_grant":
            raise IdpLoginRefused("code_rejected", "the provider refused the code", http_status=400)
        if error in ("invalid_client", "unauthorized_client"):
            raise IdpUnavailable("client_rejected", error, permanent=True)
        raise IdpUnavailable("token_endpoint_error", f"HTTP {status} {error}".strip())

    # ID token verification

    def _key_for(self, header: Mapping[str, object]) -> jwt.PyJWK | None:
        algorithm = header.get("alg")
        kid = header.get("kid")
        candidates = [
            key
            for key in self._jwks
            if key.get("kty") == _KEY_TYPE_FOR.get(str(algorithm))
            and key.get("use", "sig") == "sig"
            and key.get("alg", algorithm) == algorithm
            and (kid is None or key.get("kid") == kid)
        ]
        if len(candidates) != 1:
            return None
        try:
            return jwt.PyJWK(candidates[0], algorithm=str(algorithm))
        except jwt.PyJWTError:
            return None

    async def _verify_id_token(
        self, client: httpx.AsyncClient, id_token: str, endpoints: OidcEndpoints
    ) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise IdpUnavailable("bad_id_token", "ID token is not a JWT") from None
        if header.get("alg") not in ID_TOKEN_ALGORITHMS:
            raise IdpUnavailable("bad_id_token", f"algorithm {str(header.get('alg'))[:20]!r}")
        key = self._key_for(header)
        fetched_at = self._jwks_fetched_at
        recently = (
            fetched_at is not None and self._clock() - fetched_at < self._jwks_refresh_interval
        )
        if key is None and not recently:
            await self._fetch_jwks(client, endpoints.jwks_uri)
            key = self._key_for(header)
        if key is None:
            raise IdpUnavailable("unknown_kid", "no provider key matches the ID token")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=[str(header["alg"])],
                audience=self.client_id,
                issuer=self.issuer,
                options={
                    "require": ["iss", "aud", "sub", "exp", "iat"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise IdpUnavailable("bad_id_token", "wrong audience") from None
        except jwt.InvalidIssuerError:
            raise IdpUnavailable("bad_id_token", "wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise IdpUnavailable("bad_id_token", "bad signature") from None
        except jwt.PyJWTError as error:
            raise IdpUnavailable("bad_id_token", type(error).__name__) from None
        self._check_times(claims)
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise IdpUnavailable("bad_id_token", "azp is not this client")
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name != "nbf" and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise IdpUnavailable("bad_id_token", f"{name} is not a number")
        if claims["exp"] <= now - CLOCK_LEEWAY:
            raise IdpUnavailable("bad_id_token", "ID token expired")
        if claims["iat"] > now + CLOCK_LEEWAY:
            raise IdpUnavailable("bad_id_token", "ID token issued in the future")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + CLOCK_LEEWAY:
            raise IdpUnavailable("bad_id_token", "ID token not yet valid")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        email = claims.get("email")
        email = email if isinstance(email, str) else ""
        verified = claims.get("email_verified")
        if verified is None:
            email_verified = self._trust_email and bool(email)
        else:
            email_verified = verified is True or verified == "true"
        name = next(
            (
                value
                for value in (claims.get("name"), claims.get("preferred_username"), email)
                if isinstance(value, str) and value
            ),
            str(claims["sub"]),
        )
        return Identity(
            sub=str(claims["sub"]),
            email=email,
            email_verified=email_verified,
            name=name,
            groups=_string_list(claims.get(self.groups_claim)),
            idp=self._name,
            amr=_string_list(claims.get("amr")),
            issued_at=self._clock(),
        )
