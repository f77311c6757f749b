"""The place decision of a run on a labgrid farm (pure: no labgrid, no coordinator)."""

from __future__ import annotations

from pytest_smartball.plugin.farm.places import POLL_S, Refuse, Take, Wait, next_step

ME = "ci-host/ci"


def step(held_by: str | None, waited_s: float = 0.0, wait_s: float = 60.0, exists: bool = True):
    return next_step(
        "smartball-1",
        exists=exists,
        held_by=held_by,
        me=ME,
        coordinator="127.0.0.1:20408",
        waited_s=waited_s,
        wait_s=wait_s,
    )


def test_a_free_place_is_taken_at_once() -> None:
    assert step(None) == Take()


def test_a_held_place_is_waited_for_within_the_bound() -> None:
    assert step("lab-pc/alice", waited_s=0.0) == Wait(POLL_S)
    assert step("lab-pc/alice", waited_s=59.5) == Wait(0.5)


def test_a_held_place_is_refused_after_the_bound_naming_place_and_holder() -> None:
    refused = step("lab-pc/alice", waited_s=60.0)
    assert isinstance(refused, Refuse)
    assert "smartball-1" in refused.sentence and "lab-pc/alice" in refused.sentence
    assert "after waiting 60 s" in refused.sentence
    assert refused.sentence.count(". ") == 0, "one sentence"


def test_no_wait_refuses_a_held_place_at_once() -> None:
    refused = step("lab-pc/alice", wait_s=0.0)
    assert isinstance(refused, Refuse) and "at once" in refused.sentence


def test_a_place_held_by_the_same_user_is_not_taken_either() -> None:
    """Another job of the same CI user, or a crashed run: only a person can tell."""
    assert step(ME, waited_s=1.0) == Wait(POLL_S)
    refused = step(ME, waited_s=60.0)
    assert isinstance(refused, Refuse) and "you" in refused.sentence


def test_a_missing_place_is_refused_saying_how_to_create_it() -> None:
    refused = step(None, exists=False)
    assert isinstance(refused, Refuse)
    assert "has no place smartball-1" in refused.sentence and "create" in refused.sentence
