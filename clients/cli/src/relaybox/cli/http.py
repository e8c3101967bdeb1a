"""The CLI's one way to the API: an httpx client that turns every failure into one clear line.

A 4xx/5xx answer is RFC 9457 problem details (relaybox.api.errors): `detail` says what is wrong
and `field` names the input at fault; `ProblemError` keeps the document and renders it as one
line. A connection that fails before any answer is `ApiUnreachable`. Both are `CliFailure`s,
which the root command prints (one line on stderr) and exits 1 on.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT_S = 30.0
MAX_TEXT = 200  # of a non-problem error body quoted in the line
PROBLEM_TYPES = ("application/problem+json", "application/json")


def _user_agent() -> str:
    try:
        return f"relaybox-cli/{version('relaybox-cli')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "relaybox-cli"


class CliFailure(Exception):
    """A failure the CLI reports as one line on stderr, exiting with `exit_code`."""

    exit_code = 1

    def __init__(self, line: str, *, document: Any = None) -> None:
        super().__init__(line)
        self.line = line
        self.document = document
        """What `--json` prints on stdout (the problem document), if any."""


class ApiUnreachable(CliFailure):
    """No answer: connection refused, DNS, TLS, timeout."""


class ProblemError(CliFailure):
    """The API answered an error (problem details when it is the API that answered)."""

    def __init__(self, status: int, line: str, document: Any = None) -> None:
        super().__init__(line, document=document)
        self.status = status

    @classmethod
    def of(cls, response: httpx.Response) -> ProblemError:
        document: Any = None
        if response.headers.get("content-type", "").split(";")[0].strip() in PROBLEM_TYPES:
            try:
                document = response.json()
            except ValueError:
                document = None
        return cls(response.status_code, problem_line(response, document), document)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def problem_line(response: httpx.Response, document: Any) -> str:
    """`<status> <title>: <detail> [field: <field>]`, plus what to do for 401 and 429.

    A validation problem's `detail` already reads `field: message; ...`, then the field is not
    repeated. A body that is not problem details (a proxy's page) is quoted, shortened.
    """
    status = response.status_code
    if isinstance(document, Mapping) and ("detail" in document or "title" in document):
        title = str(document.get("title") or response.reason_phrase)
        detail = _one_line(str(document.get("detail") or ""))
        field = document.get("field")
        line = f"{status} {title}: {detail}" if detail else f"{status} {title}"
        if field and not detail.startswith(f"{field}:"):
            line += f" [field: {field}]"
    else:
        text = _one_line(response.text)[:MAX_TEXT]
        line = f"{status} {response.reason_phrase} from {response.request.url}"
        if text:
            line += f": {text}"
    if status == httpx.codes.UNAUTHORIZED:
        line += " (check --token / RELAYBOX_TOKEN; `relaybox token` prints a dev one)"
    if status == httpx.codes.TOO_MANY_REQUESTS and (wait := response.headers.get("Retry-After")):
        line += f" (retry after {wait} s)"
    return line


class Api:
    """The API at `base_url`, called with `token` as the bearer. `transport` lets a test hand
    in another one (httpx.MockTransport, a WSGI app)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer to `method path`, or `ProblemError` for a 4xx/5xx, or `ApiUnreachable`."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiUnreachable(
                f"the API at {self.base_url} did not answer within {self._timeout_s:g} s"
            ) from None
        except httpx.TransportError as exc:
            reason = _one_line(str(exc)) or type(exc).__name__
            raise ApiUnreachable(
                f"cannot reach the API at {self.base_url} ({reason}); "
                "check --api-url / RELAYBOX_API_URL"
            ) from None
        if response.is_error:
            raise ProblemError.of(response)
        return response

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON of GET `path` (`params` without the None values)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return self.request("GET", path, params=query).json()

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        """The JSON of POST `path` with a JSON body."""
        return self.request("POST", path, json=json, **kwargs).json()
