"""The one decision pipeline every enforcement point calls: identify -> classify -> decide.

`Engine.evaluate()` is the only place the stage order is written. The DNS filter, the proxy
addon and `aupguard classify` all call it; none of them holds policy logic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from agent.classifier import Classifier, is_under, split_url
from agent.config import Config, load_config
from agent.errors import ListRejected
from agent.identity import Identity
from agent.index import load_index, open_latest
from agent.model import Action, Client, Decision, Request, Source
from agent.policy import Policy
from agent.records import Notice, build_record

log = structlog.get_logger("aupguard.pipeline")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluated request: who, what, and the decision (what a record is built from)."""

    client: Client
    request: Request
    decision: Decision


class Engine:
    """A loaded config revision: compiled index, identity map, policy and notice."""

    __slots__ = ("classifier", "config", "identity", "lists_version", "notice", "policy",
                 "revision")  # fmt: skip

    def __init__(self, config: Config, classifier: Classifier) -> None:
        self.config = config
        self.revision = config.revision
        self.lists_version = classifier.index.lists_version
        self.classifier = classifier
        self.identity = Identity(config.groups)
        self.policy = Policy(config)
        self.notice = Notice.from_text(config.notice_text())

    @classmethod
    def load(cls, path: Path | None = None) -> Engine:
        """Load config and lists (reusing the cached index when lists are unchanged).

        A list that fails its error budget falls back to the last good index, loudly: a
        gateway keeps enforcing with yesterday's lists rather than stop.
        """
        config = load_config(path)
        try:
            index = load_index(config.list_sources(), config.index_dir(),
                               max_bad=config.lists.max_bad_share)  # fmt: skip
        except ListRejected as e:
            last = open_latest(config.index_dir())
            if last is None:
                raise
            log.error("lists_rejected_using_last_good", error=str(e), index=str(last.path))
            index = last
        never = [(n.entry, n.where) for n in config.never_block]
        return cls(config, Classifier(index, never_block=never))

    def evaluate(  # noqa: PLR0913  (the full question: who, what, when, from where)
        self,
        ip: str,
        target: str,
        *,
        now: float | None = None,
        user: str | None = None,
        user_groups: Iterable[str] = (),
        source: Source = Source.CLI,
        host_only: bool = False,
    ) -> Evaluation:
        """Decide on `target` (a URL, `host/path` or a host) for client `ip` at `now`.

        Raises ValueError for a target that is not a valid URL or host name.
        """
        if now is None:
            now = time.time()
        # identify: groups come from the address, then the signed-in user (if any).
        client = self.identity.identify(ip, user, user_groups)
        # classify: normalise once, then the most specific list/config match wins.
        host, path = split_url(target)
        if host_only:
            path = None
        request = Request(
            host=host, path=path, url=target if path is not None else None, source=source
        )
        classification = self.classifier.classify(host, path)
        # decide: layered rules, schedules and exceptions at `now`.
        decision = self.policy.decide(client, request, classification, now)
        if path is None and decision.action is Action.BLOCK:
            # host-only enforcement points (DNS, TLS SNI) may enforce this only when no user
            # and no URL below this host could be decided otherwise.
            decision = self._check_host_level(client, request, decision, now)
        return Evaluation(client, request, decision)

    def record(
        self,
        ev: Evaluation,
        now: float,
        *,
        event_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The decision record of `ev`, stamped with this revision's policy, lists and notice."""
        return build_record(
            request=ev.request, client=ev.client, decision=ev.decision, now=now,
            policy_rev=self.revision, lists_rev=self.lists_version, notice=self.notice,
            event_id=event_id, extra=extra,
        )  # fmt: skip

    def _check_host_level(
        self, client: Client, request: Request, decision: Decision, now: float
    ) -> Decision:
        host = request.host
        reasons = []
        if self.classifier.has_url_rules_for(host) or is_under(host, self.policy.url_grant_hosts):
            reasons.append("URL-level rules exist below this host")
        if self.policy.user_dependent(client, request, now, decision):
            reasons.append("the action depends on the signed-in user")
        if not reasons:
            return decision
        return replace(decision, user_independent=False, notes=decision.notes + tuple(reasons))
