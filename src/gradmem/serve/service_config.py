"""The HTTP service's settings (limits, batching, access) and the uvicorn configuration it runs
under; `gradmem serve` builds its flags from ServiceConfig's fields and comments."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gradmem.serve.budget import Budget
from gradmem.serve.page_security import parse_hosts

if TYPE_CHECKING:  # the config alone must not need the web stack
    from fastapi import FastAPI


@dataclass
class ServiceConfig:
    """Limits, batching and access of the service."""

    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_questions: int = 64  # questions per ask request
    max_new_tokens: int = 64  # the most answer tokens a request may ask for
    rate_per_second: float = 50.0  # sustained requests per second per client (keyed on the socket peer)
    rate_burst: int = 100  # requests a client may send at once
    max_batch: int = 32  # most requests run as one model batch
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    request_timeout_s: float = 30.0  # a request not done by then gets 503 (a queued one is dropped unrun)
    body_timeout_s: float = 10.0  # a request body not fully received by then gets 408
    max_queue: int = 1024  # requests waiting for the model beyond this get 503 at once
    header_timeout_s: float = 10.0  # a connection whose request headers are not complete by then is closed
    max_connections: int = 256  # with this many connections open, further requests get 503 (uvicorn limit_concurrency)
    api_key: str | None = None  # if set, writes and deletes need it (Authorization: Bearer KEY / X-API-Key)
    protect_reads: bool = False  # with api_key: listing, showing and asking need it too
    allowed_hosts: str | None = None  # Host names the server answers, comma-separated (others get 400); None or * = any
    budget: Budget = field(default_factory=Budget)  # work limits per request and per batch

    def __post_init__(self) -> None:
        if (
            min(
                self.max_body_bytes,
                self.max_questions,
                self.max_new_tokens,
                self.rate_burst,
                self.max_batch,
                self.max_queue,
                self.max_connections,
            )
            < 1
        ):
            raise ValueError("service limits must be >= 1")
        positive = (self.rate_per_second, self.request_timeout_s, self.body_timeout_s, self.header_timeout_s)
        if not all(math.isfinite(x) and x > 0 for x in positive) or not 0 <= self.batch_wait_ms < math.inf:
            raise ValueError("rate_per_second and the timeouts must be finite and > 0, batch_wait_ms >= 0")
        if self.api_key is not None:
            check_api_key(self.api_key)
        parse_hosts(self.allowed_hosts)  # ValueError for a list that names no host

    def limits(self) -> dict[str, Any]:
        """The limits clients may see (/version): everything but the key."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {
            "api_key_required": self.api_key is not None
        }


def check_api_key(key: str) -> None:
    """ValueError unless `key` is one or more visible ASCII characters. An empty key would start an
    open server, and a key with spaces or other characters could never match: clients send it in a
    header, which carries ASCII and loses surrounding spaces. The message never shows the key."""
    if not key:
        raise ValueError("the API key is empty; give a key of visible ASCII characters, or none for an open server")
    bad = next((i for i, ch in enumerate(key) if not "!" <= ch <= "~"), None)
    if bad is not None:
        raise ValueError(
            f"the API key has a character that is not visible ASCII at position {bad} (a space, control or "
            "non-ASCII character): clients send the key in an HTTP header, where it could never match"
        )


def server_config(
    app: FastAPI,
    host: str,
    port: int,
    trust_proxy: str | None = None,
    log_level: str = "warning",
    cfg: ServiceConfig | None = None,
) -> Any:
    """The uvicorn configuration `gradmem serve` runs. Proxy headers are applied only from the
    addresses in `trust_proxy`; without it the rate limit sees the socket peer, whatever
    X-Forwarded-For a client sends (uvicorn would otherwise trust it from loopback). Connections
    get `cfg.header_timeout_s` for each request head (gradmem.serve.connections) and at most
    `cfg.max_connections` are served at once; request heads are bounded by h11's 16 KiB."""
    import uvicorn

    from gradmem.serve.connections import header_deadline_protocol

    cfg = cfg or ServiceConfig()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=trust_proxy is not None,
        forwarded_allow_ips=trust_proxy or "",
        timeout_keep_alive=5,
        http=header_deadline_protocol(cfg.header_timeout_s),
        limit_concurrency=cfg.max_connections,
        h11_max_incomplete_event_size=16 * 1024,
    )
