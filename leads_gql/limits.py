"""Write rate limits: token buckets per token subject and per client address.

Counts live in this process: with several instances behind a load balancer each
keeps its own, so a client spread over N instances gets up to N times the rate.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import re
import time
from collections import OrderedDict

from leads_gql.errors import RateLimited

_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_MAX_KEYS = 100_000


@dataclasses.dataclass(frozen=True)
class Rate:
    count: int
    seconds: float

    @classmethod
    def parse(cls, name: str, raw: str) -> Rate:
        """`10/minute`, `5/second`, `1000/hour`, `20000/day`."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour|day)\s*", raw)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"{name} must look like 10/minute, not {raw!r}")
        return cls(int(match.group(1)), _PERIODS[match.group(2)])


@functools.lru_cache(maxsize=4096)
def client_key(address: str) -> str:
    """The bucket of a client address: IPv4 by address, IPv6 by its /64.

    One IPv6 subscriber is routinely given a whole /64, so keying by the exact
    address would hand each of its 2**64 addresses a bucket of its own. Forms of
    one address (`::FFFF:10.0.0.1`, `2001:DB8::1`) fall in one bucket.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a test client, a Unix socket): as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenBuckets:
    """A bucket of `rate.count` per key, refilled continuously over the period.

    Bounded: past `_MAX_KEYS` keys the least recently used bucket is dropped (a
    dropped bucket was refilling anyway; at worst a client gets a fresh burst).
    """

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.per_token = rate.seconds / rate.count
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, count: int = 1) -> None:
        """Take `count` writes from the key's bucket, all or none."""
        now = time.monotonic()
        tokens, last = self.buckets.pop(key, (float(self.rate.count), now))
        tokens = min(float(self.rate.count), tokens + (now - last) / self.per_token)
        if count > self.rate.count:
            self.buckets[key] = (tokens, now)
            raise RateLimited(
                math.ceil(self.rate.seconds),
                f"A batch of {count} is more than the write limit allows "
                f"({self.rate.count} per {self.rate.seconds:g} s): "
                "send smaller batches",
            )
        if tokens < count:
            self.buckets[key] = (tokens, now)
            wait = (count - tokens) * self.per_token
            raise RateLimited(max(1, math.ceil(wait)), "Too many writes; slow down")
        self.buckets[key] = (tokens - count, now)
        if len(self.buckets) > _MAX_KEYS:
            self.buckets.popitem(last=False)


class WriteLimits:
    """The operator's write limits; public capture is always limited."""

    def __init__(
        self,
        *,
        per_subject: Rate | None,
        per_address: Rate | None,
        public: Rate,
    ) -> None:
        self.per_subject = TokenBuckets(per_subject) if per_subject else None
        self.per_address = TokenBuckets(per_address) if per_address else None
        self.public = TokenBuckets(public)

    def check(
        self, *, subject: str, address: str, public: bool, count: int = 1
    ) -> None:
        """Take `count` writes (a batch counts as its number of leads)."""
        if public:
            self.public.take(client_key(address), count)
            return
        if self.per_subject is not None:
            self.per_subject.take(subject, count)
        if self.per_address is not None:
            self.per_address.take(client_key(address), count)
