from __future__ import annotations

import string
from datetime import timedelta

from churnwatch.core.settings import load_settings
from churnwatch.pipeline.processing import run_history
from churnwatch.pipeline.texts import TEXTS
from tests.factories import T0, make_event


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_text_exists_in_both_languages_with_the_same_placeholders():
    assert TEXTS["en"].keys() == TEXTS["zh-CN"].keys()
    for key, english in TEXTS["en"].items():
        assert placeholders(english) == placeholders(TEXTS["zh-CN"][key]), key


def test_warnings_speak_the_configured_language():
    events = [make_event("order", at=T0 + timedelta(weeks=w)) for w in range(40)]
    events += [
        make_event("contact", customer_id="C2", at=T0 + timedelta(weeks=w)) for w in range(60)
    ]
    events.sort(key=lambda e: e.occurred_at)
    zh = load_settings(warnings={"language": "zh-CN"})
    _, records = run_history(events, zh.warnings, 86_400)
    opened = [r for r in records if r.status == "opened"]
    assert opened and opened[0].summary.startswith("已 ") and "没有下单" in opened[0].summary
    assert "致电客户" in opened[0].recommended_action
    _, english = run_history(events, load_settings().warnings, 86_400)
    assert english[0].evidence == opened[0].evidence  # same numbers, other words


def test_every_registered_rule_speaks_both_languages_and_every_type_has_a_rule():
    from churnwatch.pipeline.events import WARNING_TYPES
    from churnwatch.pipeline.rules import RULES

    assert tuple(RULES) == WARNING_TYPES  # one rule per warning type, in the state's order
    for kind, rule in RULES.items():
        assert rule.texts and all(key.startswith(f"{kind}.") for key in rule.texts), kind
        for language in ("en", "zh-CN"):
            missing = [key for key in rule.texts if key not in TEXTS[language]]
            assert not missing, (kind, language, missing)
        assert len(rule.ladder) == 6, kind  # what churnwatch tune climbs
