"""The directory: who a call is attributed to, which teams roll it up, and which cost centre pays."""

from __future__ import annotations

import pytest

from tollhouse.config import parse_settings
from tollhouse.directory import Directory, Subject

SHA_ALICE = "ab" * 32


@pytest.fixture(scope="module")
def directory() -> Directory:
    settings = parse_settings({"directory": {
        "org": "acme",
        "teams": [
            {"id": "company", "cost_centre": "CC-ROOT"},
            {"id": "engineering", "parent": "company"},
            {"id": "platform", "parent": "engineering", "cost_centre": "CC-PLAT"},
            {"id": "payments", "parent": "platform"},
            {"id": "research"},  # a root without a cost centre
        ],
        "projects": [
            {"id": "checkout", "team": "payments", "cost_centre": "CC-CHECKOUT"},
            {"id": "ledger", "team": "payments"},
            {"id": "lab", "team": "research"},
        ],
        "people": [
            {"id": "alice", "team": "payments", "projects": ["checkout"], "provider_key_sha256": [SHA_ALICE.upper()]},
            {"id": "bob", "team": "payments", "projects": ["checkout", "ledger"]},
            {"id": "carol", "team": "payments", "cost_centre": "CC-CAROL", "projects": ["checkout"]},
            {"id": "dan", "projects": ["lab"], "kind": "contractor"},
            {"id": "erin", "team": "research"},
        ],
        "services": [
            {"id": "support-bot", "team": "platform", "project": "ledger"},
            {"id": "batch-job", "cost_centre": "CC-BATCH"},
        ],
    }}, "t")
    return Directory(settings.directory)


def test_team_chain_nearest_first(directory: Directory) -> None:
    assert directory.team_chain("payments") == ("payments", "platform", "engineering", "company")
    assert directory.team_chain("company") == ("company",)
    assert directory.team_chain("nope") == ()
    assert directory.team_chain(None) == ()


def test_person_with_one_project_gets_it_by_default(directory: Directory) -> None:
    assert directory.subject("alice") == Subject(
        id="alice", kind="employee", team="payments", teams=("payments", "platform", "engineering", "company"),
        project="checkout", cost_centre="CC-CHECKOUT")


def test_person_with_several_projects_gets_none_by_default(directory: Directory) -> None:
    bob = directory.subject("bob")
    assert bob.project is None
    # No project: the nearest team with a cost centre pays (payments has none, platform does).
    assert bob.cost_centre == "CC-PLAT"


def test_project_cost_centre_beats_team(directory: Directory) -> None:
    assert directory.subject("bob", "checkout").cost_centre == "CC-CHECKOUT"
    # A project without its own cost centre falls back to the team chain.
    assert directory.subject("bob", "ledger").cost_centre == "CC-PLAT"


def test_person_cost_centre_beats_project(directory: Directory) -> None:
    carol = directory.subject("carol")
    assert carol.project == "checkout"
    assert carol.cost_centre == "CC-CAROL"


def test_explicit_project_overrides_the_default(directory: Directory) -> None:
    assert directory.subject("alice", "ledger").project == "ledger"
    assert directory.subject("alice", "ledger").cost_centre == "CC-PLAT"


def test_person_without_team_takes_the_project_team(directory: Directory) -> None:
    dan = directory.subject("dan")
    assert (dan.kind, dan.team, dan.teams, dan.project) == ("contractor", "research", ("research",), "lab")
    assert dan.cost_centre is None  # nobody up the chain has one


def test_services(directory: Directory) -> None:
    bot = directory.subject("support-bot")
    assert bot == Subject(id="support-bot", kind="service", team="platform",
                          teams=("platform", "engineering", "company"), project="ledger", cost_centre="CC-PLAT")
    assert directory.subject("support-bot", "checkout").project == "checkout"
    assert directory.subject("support-bot", "checkout").cost_centre == "CC-CHECKOUT"
    job = directory.subject("batch-job")
    assert (job.kind, job.team, job.teams, job.project, job.cost_centre) == ("service", None, (), None, "CC-BATCH")


def test_unknown_subject(directory: Directory) -> None:
    assert directory.subject("mallory") == Subject(id="mallory", kind="unknown", team=None, teams=(), project=None,
                                                   cost_centre=None)
    # An unknown caller naming a known project is still attributed to that project's team.
    stranger = directory.subject("mallory", "checkout")
    assert (stranger.team, stranger.teams[-1], stranger.cost_centre) == ("payments", "company", "CC-CHECKOUT")


def test_key_hashes_and_projects(directory: Directory) -> None:
    assert directory.people_by_key_hash == {SHA_ALICE: "alice"}
    assert directory.org == "acme"
    assert directory.has_project("ledger") and not directory.has_project("Ledger")


def test_repeat_lookups_agree(directory: Directory) -> None:
    assert directory.subject("bob", "checkout") == directory.subject("bob", "checkout")
    assert directory.subject("bob") != directory.subject("bob", "checkout")
