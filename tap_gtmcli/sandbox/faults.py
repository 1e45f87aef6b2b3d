"""Injected misbehaviour: random faults by share, and scripted rules consumed in order."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from tap_gtmcli.sandbox.errors import ApiError

RULE_BODIES = ("json", "html", "truncated", "drop", "drop_after", "slow", "drip", "redirect")
PROXY_ERROR_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass
class FaultRule:
    """One scripted misbehaviour for the next `count` matching requests.

    body: "json" (error body with `status`), "html" (proxy page with `status`),
    "truncated" (normal answer, body cut in half), "drop" (close without answering),
    "drop_after" (handle the request, e.g. create the job, then close without answering:
    the ambiguous timeout a client must not retry blindly), "slow" (wait `delay`
    seconds, then answer normally), "drip" (answer normally, one byte of the body
    every `delay` seconds), "redirect" (302 to `location`).
    """

    method: str | None = None
    path_prefix: str = ""
    status: int = 500
    count: int = 1
    retry_after: str | None = None
    body: str = "json"
    delay: float = 1.0
    location: str = ""

    @classmethod
    def from_dict(cls, raw: Any) -> FaultRule:
        """A rule from its JSON form, or a 400 naming what is wrong."""
        if isinstance(raw, FaultRule):
            return raw
        if not isinstance(raw, dict):
            raise ApiError(400, "each fault rule must be an object")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ApiError(400, f"unknown fault rule fields: {', '.join(sorted(unknown))}")
        rule = cls(**raw)
        if rule.body not in RULE_BODIES:
            raise ApiError(400, f"fault rule body must be one of {', '.join(RULE_BODIES)}")
        if not isinstance(rule.status, int) or not 100 <= rule.status <= 599:
            raise ApiError(400, "fault rule status must be an HTTP status code")
        if not isinstance(rule.count, int) or rule.count < 1:
            raise ApiError(400, "fault rule count must be 1 or more")
        if rule.retry_after is not None:
            rule.retry_after = str(rule.retry_after)
        if rule.method is not None:
            rule.method = str(rule.method).upper()
        return rule

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request."""
        return (self.method is None or self.method == method) and path.startswith(
            self.path_prefix
        )


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request; `action` None means answer normally."""

    action: str | None = None
    status: int = 200
    body: str = "json"
    retry_after: str | None = None
    delay: float = 0.0
    location: str = ""


@dataclass
class FaultSettings:
    """Random fault shares and the added latency."""

    error_share: float = 0.0
    drop_share: float = 0.0
    truncate_share: float = 0.0
    latency_ms: float = 0.0
    fault_seed: int = 0


@dataclass
class FaultInjector:
    """Decides each request's fault; a seeded generator makes runs repeat."""

    settings: FaultSettings = field(default_factory=FaultSettings)
    rules: list[FaultRule] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(self.settings.fault_seed)

    def configure(self, **changes: Any) -> None:
        """Change shares, latency or seed at runtime (a new seed restarts the sequence)."""
        with self._lock:
            unknown = set(changes) - set(FaultSettings.__dataclass_fields__)
            if unknown:
                raise ApiError(400, f"unknown fault settings: {', '.join(sorted(unknown))}")
            updated = FaultSettings(**{**asdict(self.settings), **changes})
            for name in ("error_share", "drop_share", "truncate_share"):
                share = getattr(updated, name)
                if not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
                    raise ApiError(400, f"{name} must be a number between 0 and 1")
            if updated.error_share + updated.drop_share + updated.truncate_share > 1.0:
                raise ApiError(400, "error_share + drop_share + truncate_share must not exceed 1")
            if not isinstance(updated.latency_ms, int | float) or updated.latency_ms < 0:
                raise ApiError(400, "latency_ms must be 0 or more")
            if "fault_seed" in changes:
                self._random = random.Random(updated.fault_seed)
            self.settings = updated

    def add_rules(self, rules: list[Any]) -> None:
        """Append scripted rules, checked first and consumed in order."""
        parsed = [FaultRule.from_dict(rule) for rule in rules]
        with self._lock:
            self.rules.extend(parsed)

    def clear_rules(self) -> None:
        """Forget every scripted rule not yet consumed."""
        with self._lock:
            self.rules.clear()

    def describe(self) -> dict[str, Any]:
        """Current settings and the rules still waiting, as JSON-ready data."""
        with self._lock:
            return {**asdict(self.settings), "rules": [asdict(rule) for rule in self.rules]}

    def plan(self, method: str, path: str) -> FaultPlan:
        """Consume the first matching rule, else roll the random shares."""
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
                    return _plan_for_rule(rule)
            settings = self.settings
            if not (settings.error_share or settings.drop_share or settings.truncate_share):
                return FaultPlan()
            roll = self._random.random()
            if roll < settings.drop_share:
                return FaultPlan(action="drop")
            roll -= settings.drop_share
            if roll < settings.error_share:
                # About half of real 5xx come from a proxy in front, as an HTML page.
                if self._random.random() < 0.5:
                    return FaultPlan(action="error", status=502, body="html")
                return FaultPlan(action="error", status=self._random.choice((500, 503)))
            roll -= settings.error_share
            if roll < settings.truncate_share:
                return FaultPlan(action="truncate")
            return FaultPlan()

    @property
    def latency_seconds(self) -> float:
        """Latency to add to every faultable request."""
        return self.settings.latency_ms / 1000.0


def _plan_for_rule(rule: FaultRule) -> FaultPlan:
    if rule.body in ("drop", "drop_after"):
        return FaultPlan(action=rule.body)
    if rule.body == "truncated":
        return FaultPlan(action="truncate")
    if rule.body in ("slow", "drip"):
        return FaultPlan(action=rule.body, delay=rule.delay)
    if rule.body == "redirect":
        return FaultPlan(action="redirect", location=rule.location)
    return FaultPlan(
        action="error", status=rule.status, body=rule.body, retry_after=rule.retry_after
    )
