"""The policy engine: scope precedence, redirects, severities, provider / cost-centre / DLP / time checks and caps,
judged over a small organisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tollhouse.config import DirectoryConfig, Person, Project, Service, Team
from tollhouse.directory import Directory
from tollhouse.ledger.types import NANO_PER_USD as NANO
from tollhouse.ledger.types import CapUsage, Charge, need_of
from tollhouse.policy.decide import Gate, Outcome, Verdict, decide
from tollhouse.policy.dlp import scan
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy, Decision
from tollhouse.policy.rules import Severity, Window, parse_rules

# acme
# └── engineering
#     ├── platform (CC-PLAT)
#     │   └── payments
#     └── ml
DIRECTORY = Directory(DirectoryConfig(
    org="acme",
    teams=(Team(id="engineering"), Team(id="platform", parent="engineering", cost_centre="CC-PLAT"),
           Team(id="payments", parent="platform"), Team(id="ml", parent="engineering")),
    projects=(Project(id="checkout", team="payments", cost_centre="CC-CHECKOUT"), Project(id="ledger", team="payments"),
              Project(id="research", team="ml")),
    people=(Person(id="alice", team="payments", projects=("checkout",)),  # default project: checkout
            Person(id="bob", team="platform"),
            Person(id="carol", team="ml", projects=("research",)),  # the ML engineer
            Person(id="frank", team="ml"),
            Person(id="dave", team="payments", projects=("checkout", "ledger"), kind="contractor"),
            Person(id="erin")),  # no team, no project
    services=(Service(id="support-bot", team="platform", project="ledger"),
              Service(id="batch", cost_centre="CC-BATCH")),
))

HAIKU, SONNET, OPUS = "claude-3-haiku-20240307", "claude-3-5-sonnet-20241022", "claude-3-opus-20240229"
GPT4O, MINI = "gpt-4o", "gpt-4o-mini"
WEDNESDAY_NOON = datetime(2024, 6, 5, 12, 0, tzinfo=UTC)
SATURDAY_NOON = datetime(2024, 6, 8, 12, 0, tzinfo=UTC)
HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com", "gemini": "generativelanguage.googleapis.com"}


def R(rid: str, scope: str = "org", action: str | None = "hard_stop", **kw: Any) -> dict[str, Any]:
    """A rule: scope targets go in as team= / project= / subject= / service=, the condition as cond=."""
    rule: dict[str, Any] = {"id": rid, "scope": scope, "condition": kw.pop("cond")}
    if action is not None:
        rule["action"] = {"type": action, **kw.pop("act", {})}
    rule.update(kw)
    return rule


def allow(rid: str, models: list[str], scope: str = "org", **kw: Any) -> dict[str, Any]:
    return R(rid, scope, cond={"type": "MODEL_ALLOWLIST", "models": models}, **kw)


def deny(rid: str, models: list[str], scope: str = "org", **kw: Any) -> dict[str, Any]:
    return R(rid, scope, cond={"type": "MODEL_DENYLIST", "models": models}, **kw)


def redirect(rid: str, models: list[str], to: str, scope: str = "org", **kw: Any) -> dict[str, Any]:
    return R(rid, scope, "redirect", cond={"type": "model", "operator": "in", "models": models}, act={"model": to},
             **kw)


def compile_(rules: list[dict[str, Any]], tz: str = "UTC") -> CompiledPolicy:
    return CompiledPolicy(parse_rules(rules, tz))


def evaluate(rules: list[dict[str, Any]] | CompiledPolicy, who: str, model: str | None = GPT4O,
             project: str | None = None, provider: str = "openai", prompt: str | None = None,
             now: datetime = WEDNESDAY_NOON, explain: bool = False) -> Decision:
    """`prompt`: inspected for the content rules first, as the gateway does (None: not inspected)."""
    policy = rules if isinstance(rules, CompiledPolicy) else compile_(rules)
    subject = DIRECTORY.subject(who, project)
    hits = None if prompt is None else scan(prompt, policy.content_rules(subject), 5.0).rule_ids
    call = CallFacts(provider=provider, provider_host=HOSTS[provider], model=model, content_hits=hits)
    return policy.evaluate(call, subject, now, explain=explain)


@dataclass
class Case:
    name: str
    rules: list[dict[str, Any]]
    who: str
    model: str | None = GPT4O
    action: str = "allow"
    rule_id: str | None = None  # the deciding rule
    violated: set[str] = field(default_factory=set)  # every violated rule id
    project: str | None = None
    provider: str = "openai"
    prompt: str | None = None
    now: datetime = WEDNESDAY_NOON
    upstream_model: str | None = None  # the model after redirects; defaults to `model`


ORG_ALLOW = allow("org-allow", [HAIKU, SONNET, GPT4O])
CASES = [
    # --- org allowlist ---
    Case("org allowlist blocks an unlisted model", [allow("org-allow", [HAIKU])], "alice", GPT4O, "block",
         "org-allow", {"org-allow"}),
    Case("org allowlist lets a listed model through", [allow("org-allow", [HAIKU])], "alice", HAIKU),
    Case("org allowlist applies to services too", [allow("org-allow", [HAIKU])], "support-bot", GPT4O, "block",
         "org-allow", {"org-allow"}),
    Case("org allowlist applies to unknown callers", [allow("org-allow", [HAIKU])], "mallory", GPT4O, "block",
         "org-allow", {"org-allow"}),
    Case("no model in the call: model lists have nothing to judge", [allow("org-allow", [HAIKU])], "alice", None),
    # --- different kinds both apply ---
    Case("team denylist blocks a model the org allows", [ORG_ALLOW, deny("pay-deny", [GPT4O], "team",
                                                                         team="payments")],
         "alice", GPT4O, "block", "pay-deny", {"pay-deny"}),
    Case("team denylist does not void the org allowlist", [ORG_ALLOW, deny("pay-deny", [GPT4O], "team",
                                                                          team="payments")],
         "alice", OPUS, "block", "org-allow", {"org-allow"}),
    Case("both kinds violated at once", [allow("org-allow", [HAIKU]), deny("pay-deny", [GPT4O], "team",
                                                                          team="payments")],
         "alice", GPT4O, "block", "pay-deny", {"org-allow", "pay-deny"}),  # equals: the most specific first
    # --- same kind: the most specific scope wins ---
    Case("individual allowlist supersedes team and org allowlists",
         [allow("org-allow", [HAIKU]), allow("ml-allow", [HAIKU, SONNET], "team", team="ml"),
          allow("carol-allow", [HAIKU, SONNET, OPUS], "individual", subject="carol")], "carol", OPUS),
    Case("individual allowlist is the whole list for that person",
         [allow("org-allow", [HAIKU, GPT4O]), allow("carol-allow", [OPUS], "individual", subject="carol")],
         "carol", GPT4O, "block", "carol-allow", {"carol-allow"}),
    Case("team allowlist supersedes the org's for a teammate",
         [allow("org-allow", [HAIKU]), allow("ml-allow", [HAIKU, SONNET], "team", team="ml"),
          allow("carol-allow", [HAIKU, SONNET, OPUS], "individual", subject="carol")], "frank", SONNET),
    Case("a teammate does not get the individual's allowlist",
         [allow("org-allow", [HAIKU]), allow("ml-allow", [HAIKU, SONNET], "team", team="ml"),
          allow("carol-allow", [HAIKU, SONNET, OPUS], "individual", subject="carol")], "frank", OPUS, "block",
         "ml-allow", {"ml-allow"}),
    Case("another team still gets the org's allowlist",
         [allow("org-allow", [HAIKU]), allow("ml-allow", [HAIKU, SONNET], "team", team="ml")], "bob", SONNET,
         "block", "org-allow", {"org-allow"}),
    Case("nearest team beats the ancestor team",
         [allow("eng-allow", [HAIKU], "team", team="engineering"),
          allow("pay-allow", [HAIKU, GPT4O], "team", team="payments")], "alice", GPT4O),
    Case("ancestor team rule reaches a team without its own",
         [allow("eng-allow", [HAIKU], "team", team="engineering"),
          allow("pay-allow", [HAIKU, GPT4O], "team", team="payments")], "bob", GPT4O, "block", "eng-allow",
         {"eng-allow"}),
    Case("middle team beats the root for a grandchild team",
         [deny("eng-deny", [HAIKU], "team", team="engineering"), deny("plat-deny", [GPT4O], "team", team="platform")],
         "alice", HAIKU),
    Case("nearest team's denylist replaces the ancestor's",
         [deny("eng-deny", [HAIKU], "team", team="engineering"), deny("plat-deny", [GPT4O], "team", team="platform")],
         "alice", GPT4O, "block", "plat-deny", {"plat-deny"}),
    # --- projects ---
    Case("project rule applies to the default project", [deny("co-deny", [GPT4O], "project", project="checkout")],
         "alice", GPT4O, "block", "co-deny", {"co-deny"}),
    Case("project rule applies to a named project", [deny("co-deny", [GPT4O], "project", project="checkout")],
         "dave", GPT4O, "block", "co-deny", {"co-deny"}, project="checkout"),
    Case("project rule ignores a person with no project", [deny("co-deny", [GPT4O], "project", project="checkout")],
         "dave", GPT4O),
    Case("project rule ignores another project", [deny("co-deny", [GPT4O], "project", project="checkout")],
         "alice", GPT4O, project="ledger"),
    Case("project allowlist supersedes the team's",
         [allow("pay-allow", [HAIKU], "team", team="payments"),
          allow("co-allow", [HAIKU, GPT4O], "project", project="checkout")], "alice", GPT4O),
    Case("untargeted project rule applies to any project", [deny("any-proj", [GPT4O], "project")], "bob", GPT4O,
         "block", "any-proj", {"any-proj"}, project="research"),
    Case("untargeted project rule skips calls without a project", [deny("any-proj", [GPT4O], "project")], "bob",
         GPT4O),
    # --- services ---
    Case("service rule names its service", [deny("bot-deny", [GPT4O], "service", service="support-bot")],
         "support-bot", GPT4O, "block", "bot-deny", {"bot-deny"}),
    Case("service rule ignores other services", [deny("bot-deny", [GPT4O], "service", service="support-bot")],
         "batch", GPT4O),
    Case("untargeted service rule applies to every service", [deny("svc-deny", [GPT4O], "service")], "batch", GPT4O,
         "block", "svc-deny", {"svc-deny"}),
    Case("untargeted service rule ignores people", [deny("svc-deny", [GPT4O], "service")], "alice", GPT4O),
    Case("individual rules ignore services", [deny("ind-deny", [GPT4O], "individual")], "support-bot", GPT4O),
    Case("service allowlist supersedes the org's", [allow("org-allow", [HAIKU]),
                                                     allow("bot-allow", [MINI], "service", service="support-bot")],
         "support-bot", MINI),
    # --- untargeted individual / team rules apply to everyone ---
    *[Case(f"untargeted individual rule applies to {who}", [deny("ind-deny", [GPT4O], "individual")], who, GPT4O,
           "block", "ind-deny", {"ind-deny"}) for who in ("alice", "bob", "carol", "dave", "erin", "mallory")],
    *[Case(f"untargeted team rule applies to {who}", [deny("team-deny", [GPT4O], "team")], who, GPT4O,
           "block", "team-deny", {"team-deny"}) for who in ("alice", "bob", "carol", "dave", "support-bot")],
    Case("a contractor can be targeted", [deny("dave-deny", [GPT4O], "individual", subject="dave")], "dave", GPT4O,
         "block", "dave-deny", {"dave-deny"}),
    Case("a targeted individual rule ignores everyone else", [deny("dave-deny", [GPT4O], "individual",
                                                                   subject="dave")], "alice", GPT4O),
    Case("named individual beats every individual",
         [deny("ind-deny", [GPT4O], "individual"), deny("dave-deny", [OPUS], "individual", subject="dave")],
         "dave", GPT4O),
    # --- redirects ---
    Case("redirect first, then the allowlist judges the substitute",
         [redirect("opus-to-sonnet", [OPUS], SONNET), allow("org-allow", [SONNET, HAIKU])], "alice", OPUS,
         "redirect", "opus-to-sonnet", set(), upstream_model=SONNET),
    Case("redirect leaves other models alone", [redirect("opus-to-sonnet", [OPUS], SONNET),
                                                 allow("org-allow", [SONNET, HAIKU])], "alice", HAIKU),
    Case("a substitute the policy denies is blocked",
         [redirect("opus-to-sonnet", [OPUS], SONNET), deny("pay-deny", [SONNET], "team", team="payments")],
         "alice", OPUS, "block", "pay-deny", {"pay-deny"}, upstream_model=SONNET),
    Case("allowlist-form redirect sends every unlisted model to the default",
         [R("to-haiku", action="redirect", cond={"type": "model", "operator": "not_in", "allowlist": [HAIKU, MINI]},
            act={"model": HAIKU})], "bob", GPT4O, "redirect", "to-haiku", set(), upstream_model=HAIKU),
    Case("individual redirect supersedes the org's",
         [redirect("org-redir", [OPUS], HAIKU), redirect("carol-redir", [OPUS], SONNET, "individual",
                                                           subject="carol")],
         "carol", OPUS, "redirect", "carol-redir", set(), upstream_model=SONNET),
    Case("redirect plus a warning is still a redirect",
         [redirect("opus-to-sonnet", [OPUS], SONNET), deny("warn-sonnet", [SONNET], action="alert")], "alice", OPUS,
         "redirect", "warn-sonnet", {"warn-sonnet"}, upstream_model=SONNET),
    # --- severities ---
    Case("block beats soft_cap, warn and INFO",
         [deny("info", [GPT4O], action=None, severity="INFO"), deny("warn", [GPT4O], action="alert"),
          deny("soft", [GPT4O], action="soft_cap"), deny("block", [GPT4O])], "alice", GPT4O, "block", "block",
         {"info", "warn", "soft", "block"}),
    Case("soft_cap beats warn and INFO (decision warn)",
         [deny("info", [GPT4O], action=None, severity="INFO"), deny("warn", [GPT4O], action="alert"),
          deny("soft", [GPT4O], action="soft_cap")], "alice", GPT4O, "warn", "soft", {"info", "warn", "soft"}),
    Case("warn beats INFO",
         [deny("info", [GPT4O], action=None, severity="INFO"), deny("warn", [GPT4O], action=None, severity="WARN")],
         "alice", GPT4O, "warn", "warn", {"info", "warn"}),
    Case("INFO alone allows but is recorded", [deny("info", [GPT4O], action=None, severity="INFO")], "alice", GPT4O,
         "allow", "info", {"info"}),
    Case("block from another kind beats a soft cap",
         [deny("soft", [GPT4O], action="soft_cap"), R("prov", cond={"type": "PROVIDER_DENYLIST",
                                                                    "providers": ["openai"]})],
         "alice", GPT4O, "block", "prov", {"soft", "prov"}),
    # --- disabled rules ---
    Case("disabled rule never fires", [deny("off", [GPT4O], enabled=False)], "alice", GPT4O),
    Case("disabled individual allowlist does not supersede the org's",
         [allow("org-allow", [HAIKU]), allow("carol-allow", [GPT4O], "individual", subject="carol", enabled=False)],
         "carol", GPT4O, "block", "org-allow", {"org-allow"}),
    Case("disabled redirect does not redirect", [redirect("off", [OPUS], SONNET, enabled=False)], "alice", OPUS),
    # --- providers ---
    Case("provider denylist by id", [R("no-openai", cond={"type": "PROVIDER_DENYLIST", "providers": ["openai"]})],
         "alice", GPT4O, "block", "no-openai", {"no-openai"}),
    Case("provider denylist by hostname",
         [R("no-openai", cond={"type": "PROVIDER_DENYLIST", "providers": ["api.openai.com"]})], "alice", GPT4O,
         "block", "no-openai", {"no-openai"}),
    Case("provider denylist leaves other providers alone",
         [R("no-openai", cond={"type": "PROVIDER_DENYLIST", "providers": ["api.openai.com", "openai"]})], "alice",
         HAIKU, provider="anthropic"),
    Case("provider allowlist by id blocks others",
         [R("only-anthropic", cond={"type": "PROVIDER_ALLOWLIST", "providers": ["anthropic"]})], "alice", GPT4O,
         "block", "only-anthropic", {"only-anthropic"}),
    Case("provider allowlist by hostname lets it through",
         [R("only-anthropic", cond={"type": "PROVIDER_ALLOWLIST", "providers": ["api.anthropic.com"]})], "alice",
         HAIKU, provider="anthropic"),
    Case("lower-case provider form", [R("p", cond={"type": "provider", "operator": "in", "providers": ["gemini"]})],
         "bob", "gemini-1.5-pro", "block", "p", {"p"}, provider="gemini"),
    Case("team provider allowlist supersedes the org's",
         [R("org-prov", cond={"type": "PROVIDER_ALLOWLIST", "providers": ["anthropic"]}),
          R("ml-prov", "team", team="ml", cond={"type": "PROVIDER_ALLOWLIST", "providers": ["anthropic", "openai"]})],
         "carol", GPT4O),
    # --- cost centres ---
    *[Case(f"cost centre found for {who} {project or ''}", [R("cc", action=None, severity="BLOCK",
                                                              cond={"type": "COST_CENTRE_REQUIRED"})],
           who, project=project)
      for who, project in (("alice", None),  # checkout's CC-CHECKOUT
                           ("bob", None),  # platform's CC-PLAT
                           ("dave", None),  # payments -> platform's CC-PLAT
                           ("carol", "checkout"),  # a project with a cost centre
                           ("support-bot", None),  # platform's
                           ("batch", None),  # its own
                           ("mallory", "checkout"))],  # an unknown caller naming a project
    *[Case(f"cost centre missing for {who}", [R("cc", action=None, severity="BLOCK",
                                                cond={"type": "COST_CENTRE_REQUIRED"})],
           who, GPT4O, "block", "cc", {"cc"}, project=project)
      for who, project in (("carol", None), ("erin", None), ("mallory", None), ("frank", "research"))],
    # --- content DLP ---
    Case("DLP without a captured prompt: nothing to judge",
         [R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["email"]})], "alice", GPT4O, prompt=None),
    Case("DLP with a clean prompt", [R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["email"]})], "alice",
         GPT4O, prompt="summarise the meeting"),
    Case("DLP email detector", [R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["email"]})], "alice", GPT4O,
         "block", "dlp", {"dlp"}, prompt="mail jane.doe@example.com the numbers"),
    Case("DLP AWS key detector", [R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["email", "aws_access_key"]})],
         "alice", GPT4O, "block", "dlp", {"dlp"}, prompt="key AKIAABCDEFGHIJKLMNOP here"),
    Case("DLP private key detector", [R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["private_key"]})],
         "alice", GPT4O, "block", "dlp", {"dlp"}, prompt="-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
    Case("DLP SSN detector", [R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["us_ssn"]})], "alice", GPT4O,
         "block", "dlp", {"dlp"}, prompt="ssn 123-45-6789"),
    Case("DLP custom pattern", [R("dlp", action="alert", cond={"type": "CONTENT_DLP", "patterns": [r"PROJECT-X\d+"]})],
         "alice", GPT4O, "warn", "dlp", {"dlp"}, prompt="status of PROJECT-X42"),
    Case("DLP is cumulative across scopes",
         [R("org-dlp", action="alert", cond={"type": "CONTENT_DLP", "detectors": ["email"]}),
          R("pay-dlp", "team", team="payments", cond={"type": "CONTENT_DLP", "detectors": ["credit_card"]})],
         "alice", GPT4O, "block", "pay-dlp", {"org-dlp", "pay-dlp"},
         prompt="card 4111 1111 1111 1111 for bob@example.com"),
    # --- time ---
    Case("off-hours rule quiet on a weekday", [R("off-hours", "team", "alert", cond={
        "type": "time", "operator": "outside", "window": {"days": [1, 2, 3, 4, 5], "hours": [8, 18]}})], "alice"),
    Case("off-hours rule warns on a weekend", [R("off-hours", "team", "alert", cond={
        "type": "time", "operator": "outside", "window": {"days": [1, 2, 3, 4, 5], "hours": [8, 18]}})], "alice",
         GPT4O, "warn", "off-hours", {"off-hours"}, now=SATURDAY_NOON),
    Case("inside-window rule blocks inside it", [R("no-weekend", cond={
        "type": "time", "operator": "inside", "window": {"days": "sat,sun"}})], "bob", GPT4O, "block", "no-weekend",
         {"no-weekend"}, now=SATURDAY_NOON),
    Case("individual time window supersedes the team's",
         [R("off-hours", "team", cond={"type": "time", "window": {"days": "mon-fri", "hours": "8-18"}}),
          R("carol-hours", "individual", subject="carol", cond={"type": "time", "window": {"days": "mon-sun"}})],
         "carol", GPT4O, now=SATURDAY_NOON),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decisions(case: Case) -> None:
    d = evaluate(case.rules, case.who, case.model, project=case.project, provider=case.provider, prompt=case.prompt,
                 now=case.now)
    assert d.action == case.action
    assert d.rule_id == case.rule_id
    assert {v.rule.id for v in d.violations} == case.violated
    assert d.requested_model == case.model
    assert d.model == (case.upstream_model or case.model)
    assert all(v.reason for v in d.violations)
    if case.action == "block":
        assert d.top is not None and d.top.rule.severity is Severity.block
    if case.upstream_model and case.upstream_model != case.model:
        assert d.redirect is not None and d.redirect.rule.redirect_to == case.upstream_model


def test_info_violation_is_recorded_with_its_reason() -> None:
    d = evaluate([deny("info", [GPT4O], action=None, severity="INFO")], "alice", GPT4O)
    assert d.action == "allow" and d.severity is Severity.log
    (v,) = d.violations
    assert "gpt-4o" in v.reason and v.level.label == "org"


def test_first_of_equal_severities_decides() -> None:
    d = evaluate([deny("first", [GPT4O]), allow("second", [HAIKU])], "alice", GPT4O)
    assert d.rule_id == "first" and {v.rule.id for v in d.violations} == {"first", "second"}


def test_reasons_name_the_model_and_provider() -> None:
    d = evaluate([allow("a", [HAIKU]), R("p", cond={"type": "PROVIDER_DENYLIST", "providers": ["openai"]})],
                 "alice", GPT4O)
    reasons = {v.rule.id: v.reason for v in d.violations}
    assert "gpt-4o" in reasons["a"] and "not on the approved list" in reasons["a"]
    assert "openai" in reasons["p"] and "api.openai.com" in reasons["p"]


def test_time_rule_uses_the_rule_timezone() -> None:
    rules = [R("hours", cond={"type": "time", "window": {"days": "mon-fri", "hours": "9-17"}}, timezone="Asia/Tokyo")]
    # Wednesday 12:00 UTC is 21:00 in Tokyo: outside the window.
    d = evaluate(rules, "alice", now=WEDNESDAY_NOON)
    assert d.action == "block" and "JST" in d.violations[0].reason
    assert evaluate(rules, "alice", now=datetime(2024, 6, 5, 1, 0, tzinfo=UTC)).action == "allow"  # 10:00 JST


def test_repeated_evaluations_agree() -> None:
    policy = compile_([allow("org-allow", [HAIKU]), allow("carol-allow", [GPT4O], "individual", subject="carol")])
    for _ in range(3):
        assert evaluate(policy, "carol", GPT4O).action == "allow"
        assert evaluate(policy, "frank", GPT4O).action == "block"
        assert evaluate(policy, "carol", GPT4O, project="checkout").action == "allow"


def test_empty_policy() -> None:
    policy = compile_([])
    assert policy.empty
    d = evaluate(policy, "alice", GPT4O)
    assert (d.action, d.violations, d.caps, d.rule_id) == ("allow", (), (), None)
    assert compile_([deny("off", [GPT4O], enabled=False)]).empty


# --- caps: which counter each cap counts --------------------------------------------------------------------------

def budget(rid: str, threshold: float, scope: str = "org", action: str = "hard_stop", **kw: Any) -> dict[str, Any]:
    cond = {"type": "budget", "threshold": threshold, **kw.pop("cond", {})}
    return R(rid, scope, action, cond=cond, **kw)


PER_SUBJECT_OPENAI = {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": "openai", "threshold": 50}
CROSS = {"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai", "anthropic"], "threshold": 1000, "window": "30d"}
TOKENS = {"type": "usage", "metric": "tokens_per_hour", "threshold": 100000, "window": "1h"}

CAP_CASES: list[tuple[str, dict[str, Any], str, str | None, str, set[tuple[str, str]]]] = [
    # (case, rule, who, project, provider, expected counters)
    ("org budget counts the whole org", budget("c", 2000), "alice", None, "openai", {("org", "*")}),
    ("org budget counts services too", budget("c", 2000), "batch", None, "openai", {("org", "*")}),
    ("named team counts the whole team", budget("c", 500, "team", team="platform"), "alice", None, "openai",
     {("team", "platform")}),
    ("named team counts its own members", budget("c", 500, "team", team="platform"), "bob", None, "openai",
     {("team", "platform")}),
    ("named team skips other teams", budget("c", 500, "team", team="platform"), "carol", None, "openai", set()),
    ("untargeted team counts each subject's own team", budget("c", 500, "team"), "alice", None, "openai",
     {("team", "payments")}),
    ("untargeted team: ml", budget("c", 500, "team"), "carol", None, "openai", {("team", "ml")}),
    ("untargeted individual: each subject alice", budget("c", 1, "individual"), "alice", None, "openai",
     {("subject", "alice")}),
    ("untargeted individual: each subject bob", budget("c", 1, "individual"), "bob", None, "openai",
     {("subject", "bob")}),
    ("untargeted individual: a contractor", budget("c", 1, "individual"), "dave", None, "openai",
     {("subject", "dave")}),
    ("named individual counts that person", budget("c", 1, "individual", subject="bob"), "bob", None, "openai",
     {("subject", "bob")}),
    ("named individual skips others", budget("c", 1, "individual", subject="bob"), "alice", None, "openai", set()),
    ("named service", budget("c", 1, "service", service="support-bot"), "support-bot", None, "openai",
     {("subject", "support-bot")}),
    ("untargeted service: each service", budget("c", 1, "service"), "batch", None, "openai", {("subject", "batch")}),
    ("named project", budget("c", 100, "project", project="checkout"), "alice", None, "openai",
     {("project", "checkout")}),
    ("named project via header", budget("c", 100, "project", project="checkout"), "bob", "checkout", "openai",
     {("project", "checkout")}),
    ("untargeted project: the call's project", budget("c", 100, "project"), "dave", "ledger", "openai",
     {("project", "ledger")}),
    ("budget limited to a provider applies to it", budget("c", 100, cond={"providers": ["openai"]}), "alice", None,
     "openai", {("org", "*")}),
    ("budget limited to a provider skips others", budget("c", 100, cond={"providers": ["openai"]}), "alice", None,
     "anthropic", set()),
    ("per-subject cap counts each subject, for its provider",
     R("c", "org", "soft_cap", cond=PER_SUBJECT_OPENAI), "alice", None, "openai", {("subject", "alice")}),
    ("per-subject cap ignores other providers", R("c", "org", "soft_cap", cond=PER_SUBJECT_OPENAI), "alice", None,
     "anthropic", set()),
    ("per-subject cap at a team counts each member", R("c", "team", "soft_cap", team="platform",
                                                        cond=PER_SUBJECT_OPENAI),
     "alice", None, "openai", {("subject", "alice")}),
    ("per-subject cap at a project counts each member", R("c", "project", "soft_cap", project="checkout",
                                                           cond=PER_SUBJECT_OPENAI),
     "alice", None, "openai", {("subject", "alice")}),
    ("cross-provider budget counts the team on listed providers", R("c", "team", "alert", team="platform", cond=CROSS),
     "alice", None, "anthropic", {("team", "platform")}),
    ("cross-provider budget skips unlisted providers", R("c", "team", "alert", team="platform", cond=CROSS),
     "alice", None, "gemini", set()),
    ("token rate per subject", R("c", "individual", cond=TOKENS), "carol", None, "openai", {("subject", "carol")}),
    ("disabled cap is not counted", budget("c", 1, enabled=False), "alice", None, "openai", set()),
]


@pytest.mark.parametrize("case, rule, who, project, provider, counters", CAP_CASES, ids=[c[0] for c in CAP_CASES])
def test_cap_counters(case: str, rule: dict[str, Any], who: str, project: str | None, provider: str,
                      counters: set[tuple[str, str]]) -> None:
    d = evaluate([rule], who, GPT4O, project=project, provider=provider)
    assert {cap.counter for cap in d.caps} == counters
    assert d.action == "allow" and not d.violations  # caps are judged by decide() on the ledger's numbers


def test_caps_at_every_level_all_apply() -> None:
    rules = [budget("org", 2000), budget("eng", 800, "team", team="engineering"),
             budget("plat", 500, "team", team="platform"), budget("each", 1, "individual"),
             budget("co", 100, "project", project="checkout"), R("tok", "individual", cond=TOKENS)]
    d = evaluate(rules, "alice", GPT4O)
    caps = {cap.rule.id: cap for cap in d.caps}
    assert set(caps) == {"org", "eng", "plat", "each", "co", "tok"}
    assert caps["eng"].counter == ("team", "engineering")  # a broader team still counts everyone under it
    assert (caps["org"].metric, caps["org"].limit, caps["org"].window.monthly) == ("spend", Decimal(2000), True)
    assert (caps["tok"].metric, caps["tok"].limit, caps["tok"].window) == ("tokens", Decimal(100000),
                                                                           Window(monthly=False, seconds=3600))


# --- caps judged on the ledger's numbers (policy.decide.decide) ------------------------------------------------

def one_cap(rules: list[dict[str, Any]], who: str = "alice", provider: str = "openai",
            model: str = GPT4O) -> tuple[CompiledPolicy, Decision, Cap]:
    policy = compile_(rules)
    d = evaluate(policy, who, model, provider=provider)
    (cap,) = d.caps
    return policy, d, cap


def judge_caps(policy: CompiledPolicy, d: Decision, used: dict[Cap, Decimal], cost: Decimal, tokens: int
               ) -> Decision:
    """The decision once the ledger says each cap's counter holds `used` (dollars for spend; 0 when absent) and
    the call may cost `cost` and use `tokens`: what decide() makes of the rules' judgement `d` and those numbers
    (enforcing; the ledger's need per cap, as it computes it)."""
    charge = Charge("openai", int(cost * NANO), tokens, 0)
    usage = [CapUsage(cap, int(used.get(cap, Decimal(0)) * (NANO if cap.metric == "spend" else 1)),
                      need_of(cap, charge), cap.units, 0) for cap in d.caps]
    verdict = decide(Gate(True), policy, CallFacts("openai", HOSTS["openai"], GPT4O), DIRECTORY.subject("alice"),
                     WEDNESDAY_NOON, {}, usage, judged=Verdict(Outcome.allow, True, d))
    assert verdict.decision is not None
    return verdict.decision


@pytest.mark.parametrize("used, cost, action", [
    ("0", "0.40", "allow"),
    ("499.50", "0.40", "allow"),
    ("499.60", "0.40", "allow"),  # exactly at the limit still fits
    ("499.61", "0.40", "block"),
    ("500", "0", "allow"),  # a free call at the limit fits
    ("500", "0.01", "block"),
    ("9000", "1", "block"),
])
def test_judge_spend_cap(used: str, cost: str, action: str) -> None:
    policy, d, cap = one_cap([budget("org-budget", 500)])
    judged = judge_caps(policy, d, {cap: Decimal(used)}, Decimal(cost), tokens=10)
    assert judged.action == action
    if action == "block":
        assert judged.rule_id == "org-budget"
        (v,) = judged.violations
        assert "org" in v.reason and "500" in v.reason
    else:
        assert judged is d or judged.violations == d.violations


def test_judge_cap_without_counter_value_counts_from_zero() -> None:
    policy, d, _ = one_cap([budget("b", 1)])
    assert judge_caps(policy, d, {}, Decimal("0.99"), tokens=0).action == "allow"
    assert judge_caps(policy, d, {}, Decimal("1.01"), tokens=0).action == "block"


@pytest.mark.parametrize("used, tokens, action", [(0, 100000, "allow"), (99000, 1000, "allow"),
                                                  (99000, 1001, "block"), (100000, 1, "block")])
def test_judge_token_cap(used: int, tokens: int, action: str) -> None:
    policy, d, cap = one_cap([R("tok", "individual", cond=TOKENS)])
    judged = judge_caps(policy, d, {cap: Decimal(used)}, Decimal("1000"), tokens=tokens)  # cost is not the metric
    assert judged.action == action
    if action == "block":
        assert judged.top is not None and judged.top.rule.rate_limited


def test_judge_request_cap_counts_one_per_call() -> None:
    policy, d, cap = one_cap([R("rpm", "individual", cond={"type": "usage", "metric": "requests_per_minute",
                                                             "threshold": 10})])
    assert cap.metric == "requests" and cap.window == Window(monthly=False, seconds=60)
    assert judge_caps(policy, d, {cap: Decimal(9)}, Decimal(5), tokens=10**6).action == "allow"
    assert judge_caps(policy, d, {cap: Decimal(10)}, Decimal(0), tokens=0).action == "block"


def test_judge_soft_cap_warns() -> None:
    policy, d, cap = one_cap([R("openai-50", "individual", "soft_cap", cond=PER_SUBJECT_OPENAI)])
    judged = judge_caps(policy, d, {cap: Decimal(50)}, Decimal("0.10"), tokens=10)
    assert judged.action == "warn" and judged.rule_id == "openai-50" and judged.severity is Severity.soft_cap


def test_judge_caps_keeps_the_redirect() -> None:
    policy, d, cap = one_cap([redirect("opus-to-sonnet", [OPUS], SONNET), budget("b", 10)], model=OPUS)
    assert d.action == "redirect"
    judged = judge_caps(policy, d, {cap: Decimal(10)}, Decimal("0.01"), tokens=1)
    assert (judged.action, judged.model, judged.requested_model, judged.rule_id) == ("block", SONNET, OPUS, "b")
    fits = judge_caps(policy, d, {cap: Decimal(1)}, Decimal("0.01"), tokens=1)
    assert (fits.action, fits.model) == ("redirect", SONNET)


def test_judge_caps_checks_every_cap() -> None:
    policy = compile_([budget("org", 2000), budget("mine", 1, "individual", action="alert")])
    d = evaluate(policy, "alice", GPT4O)
    caps = {cap.rule.id: cap for cap in d.caps}
    used = {caps["org"]: Decimal(10), caps["mine"]: Decimal("0.99")}
    judged = judge_caps(policy, d, used, Decimal("0.02"), tokens=1)
    assert (judged.action, judged.rule_id, [v.rule.id for v in judged.violations]) == ("warn", "mine", ["mine"])
    used[caps["org"]] = Decimal(2000)
    judged = judge_caps(policy, d, used, Decimal("0.02"), tokens=1)
    assert (judged.action, judged.rule_id) == ("block", "org")
    assert {v.rule.id for v in judged.violations} == {"org", "mine"}


def test_judge_caps_adds_to_existing_violations() -> None:
    policy = compile_([deny("warn-4o", [GPT4O], action="alert"), budget("b", 1)])
    d = evaluate(policy, "alice", GPT4O)
    (cap,) = d.caps
    judged = judge_caps(policy, d, {cap: Decimal(1)}, Decimal("0.5"), tokens=1)
    assert judged.action == "block" and {v.rule.id for v in judged.violations} == {"warn-4o", "b"}


# --- explain ----------------------------------------------------------------------------------------------------

def test_explain_names_superseded_rules() -> None:
    rules = [allow("org-allow", [HAIKU]), allow("ml-allow", [HAIKU, SONNET], "team", team="ml"),
             allow("carol-allow", [OPUS], "individual", subject="carol"), budget("org-budget", 100),
             redirect("org-redir", [GPT4O], MINI), redirect("carol-redir", [GPT4O], HAIKU, "individual",
                                                               subject="carol")]
    d = evaluate(rules, "carol", OPUS, explain=True)
    trace = "\n".join(d.trace)
    superseded = [line for line in d.trace if line.startswith("superseded")]
    assert any("org-allow" in line and "[org]" in line and "individual carol" in line for line in superseded), trace
    assert any("ml-allow" in line and "[team ml]" in line for line in superseded), trace
    assert any("org-redir" in line for line in superseded), trace
    assert not any("carol-allow" in line or "carol-redir" in line for line in superseded), trace
    assert any(line.startswith("ok") and "carol-allow" in line for line in d.trace), trace
    assert any(line.startswith("cap") and "org-budget" in line for line in d.trace), trace


def test_explain_shows_violations_and_redirects() -> None:
    d = evaluate([redirect("opus-to-sonnet", [OPUS], SONNET), deny("no-sonnet", [SONNET])], "alice", OPUS,
                 explain=True)
    assert d.action == "block"
    assert any(line.startswith("redirect") and "opus-to-sonnet" in line and SONNET in line for line in d.trace)
    assert any(line.startswith("VIOLATED") and "no-sonnet" in line for line in d.trace)


def test_no_trace_unless_asked() -> None:
    d = evaluate([allow("org-allow", [HAIKU]), allow("carol-allow", [OPUS], "individual", subject="carol")],
                 "carol", OPUS)
    assert d.trace == ()


def test_a_remembered_decision_never_outlives_what_it_was_judged_on() -> None:
    """One compiled policy judges many calls: a repeat call gets the decision already reached, but a new
    minute (time windows), another model, provider, project or prompt (content rules) is judged afresh."""
    policy = compile_([
        R("hours", cond={"type": "time", "operator": "outside", "window": {"days": "mon-fri", "hours": "9-17"}}),
        deny("no-4o", [GPT4O], scope="team", team="ml"),
        R("dlp", cond={"type": "CONTENT_DLP", "detectors": ["email"]}),
    ])
    before_nine = datetime(2024, 6, 5, 8, 59, 30, tzinfo=UTC)
    at_nine = datetime(2024, 6, 5, 9, 0, 0, tzinfo=UTC)
    assert evaluate(policy, "bob", MINI, now=before_nine).action == "block"
    assert evaluate(policy, "bob", MINI, now=before_nine).rule_id == "hours"  # remembered, same answer
    assert evaluate(policy, "bob", MINI, now=at_nine).action == "allow"  # the next minute: judged again
    assert evaluate(policy, "carol", MINI, now=at_nine).action == "allow"
    assert evaluate(policy, "carol", GPT4O, now=at_nine).rule_id == "no-4o"  # another model
    assert evaluate(policy, "carol", GPT4O, provider="anthropic", now=at_nine).rule_id == "no-4o"
    # content rules: never remembered
    assert evaluate(policy, "bob", MINI, now=at_nine, prompt="mail a@b.io").rule_id == "dlp"
    assert evaluate(policy, "bob", MINI, now=at_nine, prompt="hello").action == "allow"
