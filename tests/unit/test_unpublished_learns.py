"""A rule this worker learned stays in its view until the policy topic's copy of the group shows
it: a copy the group's writer published before it added the rule does not hide it (the policy
API read the group in between once, and the rule was gone)."""

from __future__ import annotations

from schemas import GroupPolicy, Mode
from schemas.records import replace
from tests.builders import World, group


def _names(policy: GroupPolicy) -> set[str]:
    return {r.name for r in policy.rules}


def _learned_ls() -> tuple[World, GroupPolicy, GroupPolicy]:
    world = World(groups=[group(mode=Mode.DISCOVER)])
    before = world.policy()
    assert world.exec("/bin/ls").learn is not None
    learned = world.policy()
    assert "ls" in _names(learned) and "ls" not in _names(before)
    return world, before, learned


def test_a_copy_without_the_learned_rule_does_not_hide_it() -> None:
    world, before, learned = _learned_ls()
    # The writer's copy after another change, as new as this session's: not the rule yet.
    echo = replace(before, version=learned.version, alert_disabled=True)
    world.session.load_published(echo)
    now = world.policy()
    assert "ls" in _names(now)
    assert now.alert_disabled  # the writer's change is taken too
    assert now.version > echo.version


def test_once_a_copy_shows_it_the_topic_decides_again() -> None:
    world, _, learned = _learned_ls()
    world.session.load_published(learned)  # the writer added it
    assert "ls" in _names(world.policy())
    deleted = replace(learned, version=learned.version + 1,
                      rules=tuple(r for r in learned.rules if r.name != "ls"))
    world.session.load_published(deleted)  # then someone deleted it
    assert "ls" not in _names(world.policy())


def test_a_learn_the_writer_never_shows_is_given_up_after_a_minute() -> None:
    world, before, learned = _learned_ls()
    late = replace(before, version=learned.version,
                   updated_at=learned.updated_at + 61)
    world.session.load_published(late)
    assert "ls" not in _names(world.policy())
