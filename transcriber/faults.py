"""Fault injection: a test hook that makes segments fail on purpose (off unless set).

``STREAMSCRIBE_FAULTS`` makes :func:`transcriber.fanout.run_job` fail wherever it runs (a pool
worker inherits the variable from the server), so fault tests drive the real service. Rules are
``;``-separated ``ACTION:key=value,...``; today the one action is ``raise``, which raises
:class:`InjectedFault` where the engine is called, exactly as an engine error would. Keys:
``index=N`` (only segment N; default every segment) and ``times=K`` (only the first K matching
calls in each process; default every call). Example:
``STREAMSCRIBE_FAULTS="raise:index=1;raise:index=3,times=1"`` fails segment 1 for good and
segment 3 once (its retry succeeds). The variable is read once per process, on first use.

It lives here, not in the fan-out package, so the production path holds one call
(:func:`inject`) and none of the hook's rules.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

FAULTS_ENV = "STREAMSCRIBE_FAULTS"


class InjectedFault(RuntimeError):
    """Raised where the engine runs when a ``STREAMSCRIBE_FAULTS`` rule matches the segment."""


@dataclass
class _FaultRule:
    action: str
    index: int | None = None
    #: Matching calls left in this process (None: unlimited).
    times: int | None = None


def parse_faults(spec: str) -> list[_FaultRule]:
    """``raise:index=1;raise:index=3,times=1`` -> rules; ``ValueError`` names a bad one."""
    rules = []
    for text in filter(None, (part.strip() for part in spec.split(";"))):
        action, _, params = text.partition(":")
        if action.strip() != "raise":
            raise ValueError(f"{FAULTS_ENV}: unknown action in {text!r} (known: raise)")
        rule = _FaultRule(action.strip())
        for pair in filter(None, (item.strip() for item in params.split(","))):
            key, _, value = pair.partition("=")
            if key.strip() not in ("index", "times") or not value.strip().isdigit():
                raise ValueError(f"{FAULTS_ENV}: bad setting {pair!r} in {text!r} (index=N, times=K)")
            setattr(rule, key.strip(), int(value))
        rules.append(rule)
    return rules


@functools.cache
def _fault_rules() -> list[_FaultRule]:
    """This process's rules, parsed on first use; [] when the variable is unset (the normal case)."""
    spec = os.environ.get(FAULTS_ENV, "").strip()
    if not spec:
        return []
    rules = parse_faults(spec)
    log.warning("fault injection is on (%s=%r): segments will fail on purpose", FAULTS_ENV, spec)
    return rules


def inject(index: int) -> None:
    """Raise :class:`InjectedFault` when a rule matches segment ``index``; a no-op unless
    ``STREAMSCRIBE_FAULTS`` is set."""
    for rule in _fault_rules():
        if rule.index not in (None, index) or rule.times == 0:
            continue
        if rule.times is not None:
            rule.times -= 1
        raise InjectedFault(f"injected fault on segment {index} ({FAULTS_ENV})")
