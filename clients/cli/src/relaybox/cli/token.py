"""`relaybox token`: a development bearer token, signed here with the configured JWT secret.

The one command that does not talk to the API: it signs locally (relaybox.common.auth.
sign_bearer) with `RELAYBOX_AUTH__JWT_SECRET`, the tenant in `RELAYBOX_AUTH__TENANT_CLAIM`, as
`python -m relaybox.api token` does (which keeps working). It only holds for an API that has the
same secret.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from relaybox.cli.session import JsonOutput, Output

if TYPE_CHECKING:
    from relaybox.common.auth import AuthSettings


def configured_auth() -> AuthSettings:
    """The `RELAYBOX_AUTH__*` settings the API reads too (secret, lifetime, tenant claim);
    imported here only, so that the other commands start without them."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from relaybox.common.auth import AuthSettings
    from relaybox.common.settings import ENV_PREFIX

    class TokenSettings(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", env_file=None
        )

        auth: AuthSettings = AuthSettings()

    return TokenSettings().auth


def token(
    sub: Annotated[str, typer.Option(help="The caller (the token's subject).")] = "dev",
    tenant: Annotated[
        str | None,
        typer.Option(
            help="The tenant claim's value, when RELAYBOX_AUTH__TENANT_CLAIM is not `sub` "
            "(default: the subject)."
        ),
    ] = None,
    scopes: Annotated[
        str | None,
        typer.Option(
            help="Scopes, separated by spaces or commas (default: every scope).",
            show_default=False,
        ),
    ] = None,
    ttl: Annotated[
        int | None,
        typer.Option(min=1, help="Lifetime in seconds (default RELAYBOX_AUTH__TOKEN_TTL_S)."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Print a dev bearer token, signed locally: the only command that does not talk HTTP.

    It signs with RELAYBOX_AUTH__JWT_SECRET (and puts --tenant in RELAYBOX_AUTH__TENANT_CLAIM),
    so it is valid for an API configured with the same settings.
    """
    from relaybox.common.auth import ALL_SCOPES, sign_bearer

    settings = configured_auth()
    wanted = ALL_SCOPES if scopes is None else tuple(scopes.replace(",", " ").split())
    if not wanted:
        raise typer.BadParameter("at least one scope", param_hint="'--scopes'")
    lifetime = ttl or settings.token_ttl_s
    signed = sign_bearer(settings, sub, wanted, ttl_s=lifetime, tenant=tenant)
    out = Output(json_output)
    if not out.json_mode:
        typer.echo(signed)
        return
    out.json(
        {
            "token": signed,
            "sub": sub,
            "tenantClaim": settings.tenant_claim,
            "tenant": sub if settings.tenant_claim == "sub" else tenant or sub,
            "scopes": list(wanted),
            "expiresAt": (datetime.now(UTC) + timedelta(seconds=lifetime)).isoformat(),
        }
    )
