"""The completion callback of a durable job: one signed POST to the client's `callback_url` when it ends.

When a job ends (succeeded, failed or cancelled) the service POSTs `callback_body(job)` to the job's
`callback_url`: a small JSON object (id, status, times, error, where to GET the result), never the
transcript itself. Delivery is at least once: a 2xx answer settles it; other answers and network
errors are retried with exponential backoff up to `CallbackPolicy.max_attempts`, in memory, so a
restarted replica (or a second replica reading the same store) may send a callback again. Receivers
should treat the job id as the idempotency key.

Signature. With a key configured (`TRANSCRIPTION_CALLBACK_SECRET`), each request carries

    X-Transcription-Timestamp: <unix seconds when this attempt was sent>
    X-Transcription-Signature: sha256=<hex HMAC-SHA256 over b"<timestamp>." + the exact body bytes>

The timestamp is inside the signed message, so a captured request cannot be replayed later with a
fresh timestamp (the scheme Stripe uses). A receiver verifies, before parsing the body:

    import hashlib, hmac, time
    ts = request.headers["X-Transcription-Timestamp"]
    mac = hmac.new(SECRET, f"{ts}.".encode() + request.body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(f"sha256={mac}", request.headers["X-Transcription-Signature"])
    ok = ok and abs(time.time() - int(ts)) < 300  # refuse stale or future timestamps

Without a key neither header is sent, and a receiver cannot tell our callbacks from anyone else's.

Targets. A callback URL is checked when the job is submitted and again before every attempt (DNS may
have changed): http(s) only, no credentials in the URL, and every address its host resolves to must be
outside the blocked ranges: loopback, link-local, cloud metadata (169.254.169.254, fd00:ec2::254,
100.100.100.200, the name metadata.google.internal), unspecified, multicast and reserved. Private
ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are allowed: webhooks inside the cluster are common.
The request then goes to the very address that was checked (the URL's host is kept in `Host` and in
TLS SNI and certificate checks), so a name that resolves differently a moment later (DNS rebinding)
cannot redirect it. An operator's allowlist (`CallbackPolicy.allow`) lets chosen networks or host
names through regardless. Plain http is refused unless `allow_http` is set or the target is
allowlisted. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from core.errors import BadRequest
from serve_app.jobs.store import Job, JobStore, JobStoreError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Transcription-Signature"
TIMESTAMP_HEADER = "X-Transcription-Timestamp"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Checked in order, so that the most specific name is the one a refusal gives.
_BLOCKED_V4 = [(ipaddress.IPv4Network(net), label) for net, label in [
    ("169.254.169.254/32", "cloud metadata"),  # AWS, GCP, Azure, OpenStack
    ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
    ("0.0.0.0/8", "unspecified"),  # Linux connects 0.0.0.0 to the host itself
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # and 255.255.255.255, broadcast
]]
_BLOCKED_V6 = [(ipaddress.IPv6Network(net), label) for net, label in [
    ("fd00:ec2::254/128", "cloud metadata"),  # AWS over IPv6
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
]]
# NAT64 addresses stand for the IPv4 address in their last 32 bits; in an IPv6-only cluster with DNS64
# every IPv4-only host resolves to one, so they are judged by that address rather than refused whole.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BLOCKED_NAMES = {"metadata.google.internal": "cloud metadata", "localhost": "loopback"}


@dataclass(frozen=True)
class CallbackPolicy:
    """Where callbacks may go and how hard to try. `allow` entries are CIDR networks ("10.0.0.0/8",
    "127.0.0.1/32") or exact host names ("hooks.example.com"); an allowlisted name or network is
    reachable even in a blocked range, and over plain http."""

    allow: tuple[str, ...] = ()
    allow_http: bool = False  # plain http to any target that passes the checks, not only allowlisted ones
    timeout_s: float = 10.0  # one attempt, from connecting to the response's status line
    max_attempts: int = 5
    backoff_s: float = 1.0  # wait after the first failed attempt; doubled after each further one
    max_backoff_s: float = 60.0
    max_concurrent: int = 8  # attempts in flight at once, per sender

    def __post_init__(self) -> None:
        for entry in self.allow:
            _parse_allow_entry(entry)  # a typo fails when the policy is built, not at the first callback


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt's outcome; `retry` False when trying again cannot help (a blocked target, a 4xx)."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retry: bool = False


class _NotResolvable(BadRequest):
    """The host does not resolve now: a refusal at submission, but worth retrying at delivery."""


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    addresses: list[IPAddress]  # every address the host resolved to, all checked, in resolver order


def sign(body: bytes, key: bytes, timestamp: int) -> str:
    """The `X-Transcription-Signature` value: `sha256=` and the hex HMAC-SHA256 of `b"<timestamp>." + body`."""
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(body: bytes, key: bytes, timestamp: int, signature: str) -> bool:
    """Whether `signature` (the header's value) signs `body` at `timestamp`, compared in constant time.
    Checking that the timestamp is recent is the caller's part."""
    return hmac.compare_digest(sign(body, key, timestamp).encode(), signature.encode("utf-8", "replace"))


def callback_body(job: Job) -> bytes:
    """The POSTed JSON (compact, keys in a fixed order); times in unix seconds. The transcript is not in
    it: `result_url` (null unless the job succeeded) is where the receiver GETs it."""
    return json.dumps({
        "id": job.id,
        "object": "transcription.job",
        "status": job.state,
        "created_at": int(job.created_at),
        "finished_at": int(job.updated_at),
        "error": job.error,
        "result_url": f"/v1/jobs/{job.id}/result" if job.state == "succeeded" else None,
    }, separators=(",", ":")).encode()


def check_url(url: str, policy: CallbackPolicy) -> None:
    """Refuse (BadRequest on `callback_url`, saying what to fix) a URL callbacks may not go to; resolves
    the host, so it blocks: use `check_url_async` in async code."""
    _check(url, policy)


async def check_url_async(url: str, policy: CallbackPolicy) -> None:
    """`check_url` with the resolution in a worker thread."""
    await asyncio.to_thread(_check, url, policy)


async def deliver(url: str, body: bytes, key: bytes | None, policy: CallbackPolicy,
                  client: httpx.AsyncClient) -> DeliveryResult:
    """One attempt: check `url` again, then POST `body` to the address checked, signed with `key`
    (without a key, no signature or timestamp headers are sent). Only a 2xx counts as delivered;
    redirects are not followed."""
    try:
        target = await asyncio.to_thread(_check, url, policy)
    except BadRequest as e:
        return DeliveryResult(False, error=e.message, retry=isinstance(e, _NotResolvable))
    headers = {"Content-Type": "application/json", "Host": target.url.netloc.decode("ascii")}
    tls = {"sni_hostname": target.url.raw_host.decode("ascii")}  # certificates are checked against the name
    if key is not None:
        timestamp = int(time.time())
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = sign(body, key, timestamp)
    status: int | None = None
    location = ""
    connect_error = ""
    try:
        # httpx's timeout bounds each read and write; this bounds the attempt, against a slow drip.
        async with asyncio.timeout(policy.timeout_s):
            for address in target.addresses:  # the next address only when one refuses the connection
                try:
                    async with client.stream("POST", target.url.copy_with(host=str(address)), content=body,
                                             headers=headers, timeout=policy.timeout_s, follow_redirects=False,
                                             extensions=tls) as response:
                        status, location = response.status_code, response.headers.get("location", "")
                    break  # the response body is never read: only the status matters
                except httpx.ConnectError as e:
                    connect_error = f"{address}: {e}"
    except (TimeoutError, httpx.TimeoutException):
        return DeliveryResult(False, error=f"no answer within {policy.timeout_s:g} s", retry=True)
    except httpx.HTTPError as e:
        return DeliveryResult(False, error=f"{type(e).__name__}: {e}", retry=True)
    if status is None:
        return DeliveryResult(False, error=f"could not connect ({connect_error})", retry=True)
    if 200 <= status < 300:
        return DeliveryResult(True, status_code=status)
    if 300 <= status < 400:
        where = httpx.URL(location).host if location else "nowhere"
        return DeliveryResult(False, status_code=status, retry=False,
                              error=f"answered {status}, a redirect (to host {where!r}), which callbacks do not "
                                    "follow: register the final URL")
    retry = status >= 500 or status in (408, 429)
    return DeliveryResult(False, status_code=status, error=f"answered {status}", retry=retry)


class CallbackSender:
    """Sends the callbacks a store owes, a pass at a time: each ended job's callback is delivered or
    given up on (a non-retryable failure, or `max_attempts` failed), then marked sent in the store.
    Attempt counts and backoff live in this object only: a restart tries each owed callback anew."""

    def __init__(self, store: JobStore, key: bytes | None, policy: CallbackPolicy,
                 client_factory: Callable[[], httpx.AsyncClient] = httpx.AsyncClient) -> None:
        self._store = store
        self._key = key
        self._policy = policy
        self._client_factory = client_factory
        self._client: httpx.AsyncClient | None = None  # run's, while it runs; else each pass opens one
        self._failures: dict[str, tuple[int, float]] = {}  # job id -> (failed attempts, monotonic time of the next)

    async def run_once(self) -> int:
        """One pass over the owed callbacks; how many it attempted (those waiting out a backoff are not)."""
        jobs = await asyncio.to_thread(self._store.pending_callbacks)
        owed = {job.id for job in jobs}
        for job_id in [j for j in self._failures if j not in owed]:  # settled elsewhere, or expired
            del self._failures[job_id]
        now = time.monotonic()
        due = [job for job in jobs if self._failures.get(job.id, (0, now))[1] <= now]
        if not due:
            return 0
        limit = asyncio.Semaphore(self._policy.max_concurrent)

        async def attempt(job: Job, client: httpx.AsyncClient) -> None:
            async with limit:
                await self._attempt(job, client)

        if self._client is not None:
            outcomes = await asyncio.gather(*(attempt(job, self._client) for job in due), return_exceptions=True)
        else:
            async with self._client_factory() as client:
                outcomes = await asyncio.gather(*(attempt(job, client) for job in due), return_exceptions=True)
        for job, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.error("callback of job %s failed: %r", job.id, outcome)
        return len(due)

    async def run(self, interval_s: float = 2.0, *, stop: asyncio.Event | None = None) -> None:
        """Pass after pass, `interval_s` seconds apart, until `stop` is set (or the coroutine is cancelled);
        an exception in a pass is logged, never the end of the loop."""
        stop = stop or asyncio.Event()
        async with self._client_factory() as self._client:  # one client (and TLS context) for every pass
            try:
                while not stop.is_set():
                    try:
                        await self.run_once()
                    except Exception:
                        logger.exception("callback pass failed")
                    try:
                        await asyncio.wait_for(stop.wait(), interval_s)
                    except TimeoutError:
                        pass
            finally:
                self._client = None

    async def _attempt(self, job: Job, client: httpx.AsyncClient) -> None:
        assert job.callback_url is not None  # pending_callbacks lists only jobs with one
        result = await deliver(job.callback_url, callback_body(job), self._key, self._policy, client)
        failures = self._failures.get(job.id, (0, 0.0))[0] + (0 if result.delivered else 1)
        host = _host_of(job.callback_url)
        if not result.delivered and result.retry and failures < self._policy.max_attempts:
            delay_s = min(self._policy.backoff_s * 2 ** (failures - 1), self._policy.max_backoff_s)
            self._failures[job.id] = (failures, time.monotonic() + delay_s)
            logger.info("callback of job %s to host %s failed (%s); attempt %d of %d in %.3g s",
                        job.id, host, result.error, failures + 1, self._policy.max_attempts, delay_s)
            return
        if not result.delivered:
            logger.warning("callback of job %s to host %s given up after %d attempt(s): %s",
                           job.id, host, failures, result.error)
        self._failures.pop(job.id, None)
        try:
            await asyncio.to_thread(self._store.callback_sent, job.id)
        except JobStoreError as e:  # the job expired meanwhile: nothing left to mark
            logger.info("callback of job %s settled but not marked: %s", job.id, e)


def _check(url: str, policy: CallbackPolicy) -> _Target:
    """The URL, parsed the way httpx will send it, and its host's addresses, all checked."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except (httpx.InvalidURL, ValueError, TypeError) as e:
        raise _refuse(f"callback_url is not a valid URL: {e}") from e
    if parsed.scheme not in ("http", "https"):
        raise _refuse(f"callback_url must be an https (or http) URL, not {parsed.scheme or 'schemeless'!r}")
    if parsed.userinfo:
        raise _refuse("callback_url must not carry credentials (user:password@); put a token in the path, "
                      "or check the request's signature")
    host = parsed.raw_host.decode("ascii").rstrip(".")  # IDNA-encoded, as resolved and sent
    if not host:
        raise _refuse("callback_url has no host")
    networks, names = _allowlist(policy)
    by_name = host in names
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        if not by_name:
            _check_name(host)
        addresses = _resolve(parsed.raw_host.decode("ascii"), port)
    for address in addresses:
        if by_name or _in_any(address, networks):
            continue
        blocked = _blocked(address)
        if blocked is not None:
            label, network = blocked
            shown = f"is {address}" if literal is not None else f"resolves to {address}"
            raise _refuse(f"callback_url's host {host!r} {shown}, a {label} address ({network}); callbacks do not "
                          "go there unless the operator allowlists that host or network")
    if parsed.scheme == "http" and not policy.allow_http and not (
            by_name or all(_in_any(a, networks) for a in addresses)):
        raise _refuse("callback_url must use https (plain http only to hosts the operator allowlists)")
    return _Target(parsed, addresses)


def _check_name(host: str) -> None:
    """Refuse, before any resolution, names that are blocked by themselves or are numbers in disguise."""
    for name, label in _BLOCKED_NAMES.items():
        if host == name or host.endswith(f".{name}"):
            raise _refuse(f"callback_url's host {host!r} is a {label} name; callbacks do not go there unless "
                          "the operator allowlists it")
    last = host.rsplit(".", 1)[-1]
    # No top-level domain is numeric, but the C resolver reads "2130706433", "0x7f.1" or "0177.0.0.1" as
    # IPv4 addresses (inet_aton's forms), which the ipaddress module does not: refuse them outright.
    if last.isdigit() or last.startswith("0x"):
        raise _refuse(f"callback_url's host {host!r} is not a host name or IP address; write an IPv4 address "
                      "in dotted-decimal form (four numbers 0-255)")


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise _NotResolvable(f"callback_url's host {host!r} does not resolve ({e}); check the name",
                             param="callback_url") from e
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # without an IPv6 zone index
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _NotResolvable(f"callback_url's host {host!r} has no address", param="callback_url")
    return addresses


def _blocked(address: IPAddress) -> tuple[str, str] | None:
    """The blocked range holding `address` (a label and the network), or None."""
    prefix = ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address, prefix = address.ipv4_mapped, "IPv4-mapped "
        elif address in _NAT64:
            address, prefix = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64-embedded "
    if isinstance(address, ipaddress.IPv4Address):
        for network4, label in _BLOCKED_V4:
            if address in network4:
                return prefix + label, str(network4)
    else:
        for network6, label in _BLOCKED_V6:
            if address in network6:
                return label, str(network6)
        if address.is_reserved:
            return "reserved", "IANA reserved IPv6 space"
    return None


def _in_any(address: IPAddress, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a in n for a in candidates for n in networks if a.version == n.version)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _parse_allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    try:
        return ipaddress.ip_network(entry)
    except ValueError:
        pass
    name = entry.strip().lower().rstrip(".")
    if not name or "/" in name or ":" in name or " " in name:
        raise ValueError(f"callback allowlist entry {entry!r} is neither a CIDR network nor a host name")
    return name


def _allowlist(policy: CallbackPolicy) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], set[str]]:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    names: set[str] = set()
    for entry in policy.allow:
        parsed = _parse_allow_entry(entry)
        if isinstance(parsed, str):
            names.add(parsed)
        else:
            networks.append(parsed)
    return networks, names


def _refuse(message: str) -> BadRequest:
    return BadRequest(message, param="callback_url")


def _host_of(url: str) -> str:
    """The host alone, for logs: a URL's path and query may hold the receiver's token."""
    try:
        return httpx.URL(url).host or "?"
    except (httpx.InvalidURL, ValueError, TypeError):
        return "?"
