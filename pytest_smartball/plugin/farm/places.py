"""What to do about a labgrid place the run wants: take it, wait for it, or refuse (pure).

A run takes one place per pytest-xdist worker (one without xdist). A place held by someone
else is waited for, at most ``--smartball-place-wait`` seconds, then refused with one
sentence naming the place and who holds it: a board is never taken from another run.
A place held by this very user on this host is also someone else's: another job of the same
CI user, or a run that crashed before releasing it, and only a person can tell which.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How long a run waits, by default, for a place another user holds.
DEFAULT_PLACE_WAIT_S = 60.0
#: How often it asks the coordinator again meanwhile.
POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Take:
    """The place is free: acquire it now."""


@dataclass(frozen=True, slots=True)
class Wait:
    """The place is held; ask again in ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Refuse:
    """Stop the run before any test: ``sentence`` says why and what to do."""

    sentence: str


PlaceStep = Take | Wait | Refuse


def next_step(
    place: str,
    *,
    exists: bool,
    held_by: str | None,
    me: str,
    coordinator: str,
    waited_s: float,
    wait_s: float,
) -> PlaceStep:
    """The next step for ``place`` (``held_by``: labgrid's ``host/user`` that acquired it,
    None when free), after ``waited_s`` of the ``wait_s`` the run may wait."""
    if not exists:
        return Refuse(
            f"the labgrid coordinator {coordinator} has no place {place}: create it "
            f"(labgrid-client -p {place} create; add-match EXPORTER/GROUP/*) or correct "
            "the environment file"
        )
    if held_by is None:
        return Take()
    if waited_s < wait_s:
        return Wait(min(POLL_S, wait_s - waited_s))
    if held_by == me:
        who = f"you ({held_by}: another run of yours, or one that did not release it)"
    else:
        who = held_by
    waited = f"after waiting {waited_s:.0f} s" if wait_s > 0 else "at once (no wait asked)"
    return Refuse(
        f"labgrid place {place} is held by {who}; refused {waited}: wait for "
        f"that run, release the place if nothing uses it (labgrid-client -p {place} release "
        "--kick), or give --smartball-place-wait more seconds"
    )
