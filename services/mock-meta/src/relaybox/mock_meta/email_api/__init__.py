"""The token-authenticated email HTTP API of ../shared/contracts/email-api.openapi.json."""
