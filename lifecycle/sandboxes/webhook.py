"""WebhookDriver: ask the app's own endpoint to release a sandbox, with an HMAC-signed POST."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request

from lifecycle.sandboxes.base import SandboxError, SandboxLease

log = logging.getLogger(__name__)
SIGNATURE_HEADER = 'X-Lifecycle-Signature'
TIMESTAMP_HEADER = 'X-Lifecycle-Timestamp'


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """'sha256=<hex>' of HMAC-SHA256 over '<timestamp>.<body>'; the receiver recomputes and compares."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b'.' + body, hashlib.sha256).hexdigest()
    return f'sha256={digest}'


class WebhookDriver:
    """POSTs `{"event": "release", "session_id", "reason"}` to `url` (and `{"event": "extend", ...}` when a
    session's deadline moves).

    2xx and 404 (already gone) are success; 5xx, 429 and network errors are retried with backoff;
    any other status fails at once.
    """

    def __init__(self, url: str, secret: str, *, timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 0.5):
        self.url = url
        self._secret = secret
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def release(self, session_id: str, reason: str) -> None:
        self._post({'event': 'release', 'session_id': session_id, 'reason': reason}, 'release', session_id)

    def extend_deadline(self, session_id: str, expires_at_ms: int) -> bool:
        """POST `{"event": "extend", "session_id", "expires_at_ms"}`: the session's hard deadline moved there (an
        endpoint that does not know the event answers 404, taken as "cannot move it")."""
        body = {'event': 'extend', 'session_id': session_id, 'expires_at_ms': expires_at_ms}
        return self._post(body, 'deadline move', session_id)

    def _post(self, payload: dict[str, object], what: str, session_id: str) -> bool:
        """POST the signed payload; True on 2xx, False on 404, SandboxError once the retries are spent."""
        body = json.dumps(payload).encode()
        for attempt in range(self.retries + 1):
            timestamp = str(int(time.time()))
            request = urllib.request.Request(
                self.url,
                data=body,
                method='POST',
                headers={
                    'Content-Type': 'application/json',
                    TIMESTAMP_HEADER: timestamp,
                    SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s):
                    return True
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response's socket
                if exc.code == 404:
                    return False
                if exc.code < 500 and exc.code != 429:
                    raise SandboxError(f'{what} of {session_id!r} refused by {self.url}: HTTP {exc.code}') from exc
                failure: Exception = exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                failure = exc
            log.warning('sandbox %s of %s failed (attempt %d): %s', what, session_id, attempt + 1, failure)
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise SandboxError(f'{what} of {session_id!r} via {self.url} failed: {failure}') from failure

    def leases(self) -> list[SandboxLease]:
        return []
