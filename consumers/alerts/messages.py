"""The text of each notification, per warning type, in English and Simplified Chinese.

Every message names the customer and its owner, says what changed (the
warning's summary), lists the evidence against the baseline, the expected
loss when a churn model score exists, the recommended action, and the short
id to quote in feedback. Each comes as plain text and as Markdown (channels
that render it get the rich variant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from churnwatch.consumers.alerts.ledger import Episode, Task
from churnwatch.pipeline.texts import Language

TITLES: dict[Language, dict[str, str]] = {
    "en": {
        "sales_drop": "Sales drop",
        "overdue_debt": "Overdue debt",
        "cooling_engagement": "Cooling engagement",
        "complaint_trouble": "Complaint trouble",
        "churn_risk": "Churn risk",
    },
    "zh-CN": {
        "sales_drop": "销售进程预警",
        "overdue_debt": "欠款预警",
        "cooling_engagement": "关系冷淡预警",
        "complaint_trouble": "投诉预警",
        "churn_risk": "流失风险预警",
    },
}

WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "opened": "{title} ({severity}): {customer}",
        "reminder": "Still open: {title} ({severity}): {customer}",
        "escalated": "Worse: {title} now {severity}: {customer}",
        "resolved": "Resolved: {title}: {customer}",
        "owner": "Owner",
        "changed": "What changed",
        "evidence": "Evidence",
        "loss": "Expected loss (value at stake x churn risk)",
        "no_loss": "Value at stake (52-week revenue)",
        "action": "Recommended action",
        "held": "Also open for this customer (held back, see above)",
        "ref": "Reference {short_id}: reply with `churnwatch alerts feedback {short_id} "
        "contacted|saved|lost|false_alarm`",
        "resolved_body": "The {title} warning for {customer} has cleared: {summary}",
        "digest": "Your open warnings ({count}), by expected loss",
        "digest_line": "{rank}. {customer} - {title} ({severity}), {loss_label} {loss:,.0f}: "
        "{summary}",
        "digest_empty": "No open warnings.",
        "digest_tasks": "Your overdue tasks ({count}), oldest due first",
        "digest_task": "{customer} - {text} (due {due})",
        "link": "Open in churnwatch",
        "one_click": "One click (asks you to confirm)",
        "do_acknowledged": "Acknowledge",
        "do_snoozed": "Snooze 14 days",
        "do_contacted": "Done: contacted",
        "do_false_alarm": "False alarm",
        "task_overdue": "Task overdue: {title} ({severity}): {customer}",
        "task_escalated": "Overdue task of {owner}: {title} ({severity}): {customer}",
        "task": "Task",
        "due": "Due",
        "opened_on": "Opened",
        "reminded": "The owner was reminded on {day} and has not closed it.",
    },
    "zh-CN": {
        "opened": "{title}（{severity}）：{customer}",
        "reminder": "仍未解决：{title}（{severity}）：{customer}",
        "escalated": "升级：{title}现为 {severity}：{customer}",
        "resolved": "已解除：{title}：{customer}",
        "owner": "负责人",
        "changed": "变化",
        "evidence": "依据",
        "loss": "预期损失（涉及金额 x 流失概率）",
        "no_loss": "涉及金额（近 52 周销售额）",
        "action": "建议行动",
        "held": "该客户同时存在（已合并在本消息中）",
        "ref": "编号 {short_id}：反馈请用 `churnwatch alerts feedback {short_id} "
        "contacted|saved|lost|false_alarm`",
        "resolved_body": "{customer} 的{title}已解除：{summary}",
        "digest": "您的未解决预警（{count} 条），按预期损失排序",
        "digest_line": (
            "{rank}. {customer} - {title}（{severity}），{loss_label} {loss:,.0f}：{summary}"
        ),
        "digest_empty": "没有未解决的预警。",
        "digest_tasks": "您的逾期任务（{count} 个），按截止日期排序",
        "digest_task": "{customer} - {text}（截止 {due}）",
        "link": "在 churnwatch 中查看",
        "one_click": "一键操作（需确认）",
        "do_acknowledged": "确认收到",
        "do_snoozed": "暂停提醒 14 天",
        "do_contacted": "已完成：已联系",
        "do_false_alarm": "误报",
        "task_overdue": "任务逾期：{title}（{severity}）：{customer}",
        "task_escalated": "{owner} 的任务逾期：{title}（{severity}）：{customer}",
        "task": "任务",
        "due": "截止",
        "opened_on": "创建",
        "reminded": "已于 {day} 提醒负责人，任务仍未关闭。",
    },
}


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    markdown: str


def loss(value: float, churn_probability: float | None) -> float:
    """Value at stake x churn risk when a model scored the customer, else the value at stake."""
    return value if churn_probability is None else value * churn_probability


def expected_loss(episode: Episode) -> float:
    """:func:`loss` of an episode (its 52-week revenue is in its evidence)."""
    return loss(float(episode.evidence.get("revenue_52w", 0.0)), episode.churn_probability)


#: What makes a link or markup in Markdown (with ``<`` and ``&``, escaped as HTML).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]])")


def _md(text: str) -> str:
    """``text`` shown as it is in the Markdown (and so HTML) body: a customer name
    or an owner from the customers topic can neither make a link nor add markup."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _customer(e: Episode) -> str:
    return f"{e.customer_name} ({e.customer_id})" if e.customer_name else e.customer_id


def page_link(base_url: str, customer_id: str = "") -> str:
    """The web inbox's page of a customer (or the inbox); "" without a ``web.base_url``."""
    if not base_url:
        return ""
    base = base_url.rstrip("/")
    return f"{base}/customers/{quote(customer_id, safe='')}" if customer_id else f"{base}/inbox"


def _with_link(message: Message, link: str, language: Language) -> Message:
    if not link:
        return message
    label = WORDS[language]["link"]
    return Message(
        message.subject,
        f"{message.text}\n{label}: {link}\n",
        f"{message.markdown}\n[{_md(label)}]({link})\n",
    )


def episode_message(
    episode: Episode,
    kind: str,
    language: Language,
    short_id: str,
    held: list[Episode],
    link: str = "",
    actions: dict[str, str] | None = None,
) -> Message:
    """An ``opened``, ``escalated``, ``reminder`` or ``resolved`` message about ``episode``
    (with ``link``: where to open the customer's page; with ``actions``: the
    one-click links, by action, that a message about an open warning lists)."""
    message = _with_link(_episode_message(episode, kind, language, short_id, held), link, language)
    return message if kind == "resolved" else _with_actions(message, actions or {}, language)


def task_message(
    task: Task,
    episode: Episode,
    kind: str,
    language: Language,
    short_id: str,
    link: str = "",
    actions: dict[str, str] | None = None,
) -> Message:
    """A ``task_overdue`` (to the owner) or ``task_escalated`` (to the manager) message:
    the task, when it was due, and the warning it is about."""
    w = WORDS[language]
    title = TITLES[language][episode.warning_type]
    subject = w[kind].format(
        title=title, severity=task.severity, customer=_customer(episode), owner=task.owner or "-"
    )
    subject = f"[churnwatch {short_id}] {subject}"
    lines = [
        (w["task"], task.text),
        (w["due"], task.due_at.strftime("%Y-%m-%d %H:%M UTC")),
        (w["opened_on"], task.opened_at.strftime("%Y-%m-%d")),
        (w["owner"], task.owner or "-"),
        (w["changed"], episode.summary),
    ]
    text = [subject, ""] + [f"{label}: {value}" for label, value in lines]
    md = [f"**{_md(subject)}**", ""] + [f"- **{label}**: {_md(value)}" for label, value in lines]
    if task.reminded_at is not None and kind == "task_escalated":
        said = w["reminded"].format(day=task.reminded_at.strftime("%Y-%m-%d"))
        text += ["", said]
        md += ["", _md(said)]
    ref = w["ref"].format(short_id=short_id)
    message = Message(
        subject, "\n".join(text + ["", ref]) + "\n", "\n".join(md + ["", _md(ref)]) + "\n"
    )
    return _with_actions(_with_link(message, link, language), actions or {}, language)


def _with_actions(message: Message, actions: dict[str, str], language: Language) -> Message:
    if not actions:
        return message
    w = WORDS[language]
    text = [f"{w['do_' + action]}: {url}" for action, url in actions.items()]
    md = [f"[{_md(w['do_' + action])}]({url})" for action, url in actions.items()]
    return Message(
        message.subject,
        f"{message.text}\n{w['one_click']}:\n" + "\n".join(f"  {line}" for line in text) + "\n",
        f"{message.markdown}\n{_md(w['one_click'])}: " + " · ".join(md) + "\n",
    )


def _episode_message(
    episode: Episode, kind: str, language: Language, short_id: str, held: list[Episode]
) -> Message:
    w = WORDS[language]
    title = TITLES[language][episode.warning_type]
    customer = _customer(episode)
    subject = w[kind].format(title=title, severity=episode.severity, customer=customer)
    subject = f"[churnwatch {short_id}] {subject}"
    if kind == "resolved":
        body = w["resolved_body"].format(title=title, customer=customer, summary=episode.summary)
        ref = w["ref"].format(short_id=short_id)
        return Message(subject, f"{body}\n\n{ref}\n", f"{_md(body)}\n\n{_md(ref)}\n")
    loss_label = w["loss"] if episode.churn_probability is not None else w["no_loss"]
    evidence = [f"{k}: {v:,.2f}".rstrip("0").rstrip(".") for k, v in episode.evidence.items()]
    lines = [
        (w["owner"], episode.owner or "-"),
        (w["changed"], episode.summary),
        (loss_label, f"{expected_loss(episode):,.0f}"),
        (w["action"], episode.action),
    ]
    text = [subject, ""] + [f"{label}: {value}" for label, value in lines]
    text += ["", w["evidence"] + ":"] + [f"  {line}" for line in evidence]
    md = [f"**{_md(subject)}**", ""] + [f"- **{label}**: {_md(value)}" for label, value in lines]
    md += ["", f"**{w['evidence']}**", ""] + [f"- `{line}`" for line in evidence]
    if held:
        items = [f"{TITLES[language][h.warning_type]}: {h.summary}" for h in held]
        text += ["", w["held"] + ":"] + [f"  - {i}" for i in items]
        md += ["", f"**{w['held']}**", ""] + [f"- {_md(i)}" for i in items]
    ref = w["ref"].format(short_id=short_id)
    return Message(
        subject, "\n".join(text + ["", ref]) + "\n", "\n".join(md + ["", _md(ref)]) + "\n"
    )


def digest_message(
    episodes: list[Episode],
    language: Language,
    short_id: str,
    link: str = "",
    overdue: list[tuple[Task, Episode]] | None = None,
) -> Message:
    """The recipient's open warnings, highest expected loss first, and their overdue
    tasks (``overdue``: each with its warning), oldest due first."""
    message = _digest_message(episodes, language, short_id)
    if overdue:
        w = WORDS[language]
        head = w["digest_tasks"].format(count=len(overdue))
        lines = [
            w["digest_task"].format(
                customer=_customer(e), text=t.text, due=t.due_at.strftime("%Y-%m-%d")
            )
            for t, e in sorted(overdue, key=lambda pair: pair[0].due_at)
        ]
        message = Message(
            message.subject,
            message.text + "\n" + "\n".join([head, *lines]) + "\n",
            message.markdown
            + "\n"
            + "\n".join([f"**{_md(head)}**", "", *(f"- {_md(line)}" for line in lines)])
            + "\n",
        )
    return _with_link(message, link, language)


def _digest_message(episodes: list[Episode], language: Language, short_id: str) -> Message:
    w = WORDS[language]
    ranked = sorted(episodes, key=expected_loss, reverse=True)
    subject = f"[churnwatch {short_id}] " + w["digest"].format(count=len(ranked))
    lines = [
        w["digest_line"].format(
            rank=i,
            customer=_customer(e),
            title=TITLES[language][e.warning_type],
            severity=e.severity,
            loss_label=w["loss"] if e.churn_probability is not None else w["no_loss"],
            loss=expected_loss(e),
            summary=e.summary,
        )
        for i, e in enumerate(ranked, 1)
    ] or [w["digest_empty"]]
    return Message(
        subject,
        "\n".join([subject, "", *lines]) + "\n",
        "\n".join([f"**{_md(subject)}**", "", *map(_md, lines)]) + "\n",
    )
