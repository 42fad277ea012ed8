"""Every text a warning carries, in English and Simplified Chinese (pure).

The setting ``warnings.language`` (``en`` or ``zh-CN``) picks the language.
Placeholders are filled with :func:`text`; numbers keep their thousands
separators in both languages.
"""

from __future__ import annotations

from typing import Any, Literal

Language = Literal["en", "zh-CN"]

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "separator": "; ",
        "sales_drop.silence": (
            "no order for {days:.0f} days; usually one every {gap:.0f} days, so a pause "
            "this long comes about 1 time in {odds:,.0f}; longest pause in the past year "
            "{longest:.0f} days"
        ),
        "sales_drop.silence_thin": (
            "no order for {days:.0f} days after only {orders} order(s); customers like it "
            "order about every {prior:.0f} days, so a pause this long comes about 1 time "
            "in {odds:,.0f}"
        ),
        "sales_drop.drop": (
            "{orders:.0f} orders worth {amount:,.0f} in the last {weeks} weeks, "
            "usually {expected_orders:.0f} worth {expected_amount:,.0f}; {change}"
        ),
        "sales_drop.action": (
            "Call the customer this week: ask what changed and whether a competitor is "
            "quoting; review open quotes and recent complaints before the call."
        ),
        "overdue_debt.summary": (
            "{amount:,.0f} overdue on {invoices} invoice(s); oldest {days:.0f} days past due "
            "(open balance {balance:,.0f})"
        ),
        "overdue_debt.action": (
            "Ask finance for the statement, then call the customer about the overdue "
            "invoices; agree a payment date and check for a dispute behind the delay."
        ),
        "cooling_engagement.summary": (
            "{recent:.0f} inbound contacts in the last {weeks} weeks, usually {expected:.0f}; "
            "last one {days:.0f} days ago"
        ),
        "cooling_engagement.action": (
            "Visit or call the decision maker (not only the buyer) and ask for honest "
            "feedback; offer a business review."
        ),
        "complaint_trouble.surge": "{count:.0f} complaints in 4 weeks, usually {usual:.1f}",
        "complaint_trouble.stale": "{open} open, oldest {days:.0f} days unresolved",
        "complaint_trouble.returns": "returns {amount:,.0f} = {share:.0%} of 13 weeks' orders",
        "complaint_trouble.calm": "complaints back to normal",
        "complaint_trouble.action": (
            "Have the account owner call with the service lead: close the open complaints, "
            "explain what was fixed, and check the customer's stock of returned goods."
        ),
        "churn_risk.summary": (
            "churn risk {probability:.0%} within {horizon:.0f} days (model {version}); "
            "main reasons: {reasons}"
        ),
        "churn_risk.reason": "{label} {value} (usual {usual})",
        "churn_risk.calm": "churn risk down to {probability:.0%}",
        "churn_risk.action": (
            "Review the account with its owner this week: the reasons show what moved the "
            "score; call the customer and agree a concrete next order or meeting."
        ),
        "unknown": "unknown",
    },
    "zh-CN": {
        "separator": "；",
        "sales_drop.silence": (
            "已 {days:.0f} 天没有下单；通常每 {gap:.0f} 天下单一次，"
            "这么长的间隔约 {odds:,.0f} 次中才有 1 次；过去一年最长间隔 {longest:.0f} 天"
        ),
        "sales_drop.silence_thin": (
            "仅下过 {orders} 笔订单，已 {days:.0f} 天没有下单；"
            "同类客户约每 {prior:.0f} 天下单一次，这么长的间隔约 {odds:,.0f} 次中才有 1 次"
        ),
        "sales_drop.drop": (
            "最近 {weeks} 周下单 {orders:.0f} 笔，金额 {amount:,.0f}；"
            "通常为 {expected_orders:.0f} 笔，金额 {expected_amount:,.0f}；{change}"
        ),
        "sales_drop.action": (
            "本周内致电客户：了解发生了什么变化、是否有竞争对手在报价；"
            "通话前先查看未结报价和近期投诉。"
        ),
        "overdue_debt.summary": (
            "{invoices} 张发票逾期，共 {amount:,.0f}；最久已逾期 {days:.0f} 天"
            "（未结余额 {balance:,.0f}）"
        ),
        "overdue_debt.action": (
            "向财务索取对账单，然后就逾期发票致电客户：约定付款日期，并确认延迟背后是否有争议。"
        ),
        "cooling_engagement.summary": (
            "最近 {weeks} 周客户主动联系 {recent:.0f} 次，通常为 {expected:.0f} 次；"
            "上次联系在 {days:.0f} 天前"
        ),
        "cooling_engagement.action": (
            "拜访或致电决策人（不只是采购），坦诚听取反馈，并提议一次业务回顾。"
        ),
        "complaint_trouble.surge": "4 周内投诉 {count:.0f} 次，通常为 {usual:.1f} 次",
        "complaint_trouble.stale": "{open} 个投诉未解决，最久已 {days:.0f} 天",
        "complaint_trouble.returns": "退货 {amount:,.0f}，占 13 周订单金额的 {share:.0%}",
        "complaint_trouble.calm": "投诉已恢复正常",
        "complaint_trouble.action": (
            "请客户负责人与服务主管一起致电：关闭未结投诉，说明已改进之处，并核实客户的退货库存。"
        ),
        "churn_risk.summary": (
            "{horizon:.0f} 天内流失概率 {probability:.0%}（模型 {version}）；主要原因：{reasons}"
        ),
        "churn_risk.reason": "{label} {value}（通常 {usual}）",
        "churn_risk.calm": "流失风险已降至 {probability:.0%}",
        "churn_risk.action": (
            "本周与客户负责人一起复盘该客户：原因说明了分数为何上升；"
            "致电客户，约定明确的下一笔订单或会面。"
        ),
        "unknown": "未知",
    },
}


#: Model inputs in business words (a churn-risk warning's reasons), by language.
FEATURE_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "history_weeks": "weeks of history",
        "orders_recent": "orders in the recent weeks",
        "amount_recent": "revenue in the recent weeks",
        "orders_baseline_per_week": "usual orders per week",
        "amount_baseline_per_week": "usual revenue per week",
        "amount_same_weeks_last_year": "revenue in the same weeks last year",
        "orders_4w": "orders in the last 4 weeks",
        "orders_13w": "orders in the last 13 weeks",
        "amount_13w": "revenue in the last 13 weeks",
        "orders_total": "orders ever",
        "days_since_last_order": "days since the last order",
        "mean_order_gap_days": "usual days between orders",
        "silence_vs_usual_gap": "silence against the usual gap (times)",
        "longest_gap_past_year_days": "longest pause in the past year (days)",
        "amount_trend": "revenue trend against the baseline",
        "open_balance": "open balance",
        "overdue_amount": "overdue amount",
        "overdue_1_30": "overdue 1-30 days",
        "overdue_31_60": "overdue 31-60 days",
        "overdue_61_90": "overdue 61-90 days",
        "overdue_over_90": "overdue over 90 days",
        "max_days_past_due": "days past due (oldest invoice)",
        "overdue_invoices": "overdue invoices",
        "share_paid_late": "share of invoices paid late",
        "days_late_recent": "recent days late per invoice",
        "days_late_usual": "usual days late per invoice",
        "payment_delays_growing": "payment delays growing (1 = yes)",
        "open_disputes": "open disputes",
        "credit_used": "share of the credit limit used",
        "complaints_4w": "complaints in the last 4 weeks",
        "complaints_13w": "complaints in the last 13 weeks",
        "complaints_usual_4w": "usual complaints per 4 weeks",
        "open_complaints": "unresolved complaints",
        "oldest_open_complaint_days": "age of the oldest open complaint (days)",
        "max_open_severity": "worst open complaint severity",
        "returns_13w": "returns in the last 13 weeks",
        "returns_share_13w": "returns as a share of orders (13 weeks)",
        "inbound_recent": "contacts from the customer, recent weeks",
        "inbound_baseline_per_week": "usual contacts from the customer per week",
        "days_since_last_inbound": "days since the customer last got in touch",
        "days_since_last_contact": "days since any contact",
        "outbound_recent": "our contacts, recent weeks",
        "inbound_share_recent": "share of contacts the customer started",
        "revenue_52w": "revenue in the last 52 weeks",
        "tenure_days": "days as a customer",
        "order_regularity": "irregularity of order gaps",
        "quadrant_at_risk": "high value, not loyal",
        "quadrant_grow": "low value, loyal",
        "quadrant_let_go": "low value, not loyal",
        "quadrant_protect": "high value, loyal",
    },
    "zh-CN": {
        "history_weeks": "历史周数",
        "orders_recent": "近几周订单数",
        "amount_recent": "近几周销售额",
        "orders_baseline_per_week": "通常每周订单数",
        "amount_baseline_per_week": "通常每周销售额",
        "amount_same_weeks_last_year": "去年同期销售额",
        "orders_4w": "近 4 周订单数",
        "orders_13w": "近 13 周订单数",
        "amount_13w": "近 13 周销售额",
        "orders_total": "累计订单数",
        "days_since_last_order": "距上次下单天数",
        "mean_order_gap_days": "通常下单间隔（天）",
        "silence_vs_usual_gap": "沉默时长为通常间隔的倍数",
        "longest_gap_past_year_days": "过去一年最长间隔（天）",
        "amount_trend": "销售额相对基线的趋势",
        "open_balance": "未结余额",
        "overdue_amount": "逾期金额",
        "overdue_1_30": "逾期 1-30 天金额",
        "overdue_31_60": "逾期 31-60 天金额",
        "overdue_61_90": "逾期 61-90 天金额",
        "overdue_over_90": "逾期 90 天以上金额",
        "max_days_past_due": "最久逾期天数",
        "overdue_invoices": "逾期发票数",
        "share_paid_late": "延迟付款发票占比",
        "days_late_recent": "近期每张发票平均延迟天数",
        "days_late_usual": "通常每张发票平均延迟天数",
        "payment_delays_growing": "付款延迟在增加（1 = 是）",
        "open_disputes": "未解决的账务争议",
        "credit_used": "信用额度使用比例",
        "complaints_4w": "近 4 周投诉数",
        "complaints_13w": "近 13 周投诉数",
        "complaints_usual_4w": "通常每 4 周投诉数",
        "open_complaints": "未解决投诉数",
        "oldest_open_complaint_days": "最久未解决投诉（天）",
        "max_open_severity": "未解决投诉的最高严重度",
        "returns_13w": "近 13 周退货金额",
        "returns_share_13w": "退货占订单比例（13 周）",
        "inbound_recent": "近几周客户主动联系次数",
        "inbound_baseline_per_week": "通常每周客户主动联系次数",
        "days_since_last_inbound": "距客户上次主动联系天数",
        "days_since_last_contact": "距上次任何联系天数",
        "outbound_recent": "近几周我方联系次数",
        "inbound_share_recent": "客户主动联系占比",
        "revenue_52w": "近 52 周销售额",
        "tenure_days": "合作天数",
        "order_regularity": "下单间隔的不规律程度",
        "quadrant_at_risk": "高价值、不忠诚",
        "quadrant_grow": "低价值、忠诚",
        "quadrant_let_go": "低价值、不忠诚",
        "quadrant_protect": "高价值、忠诚",
    },
}


def text(language: Language, key: str, **params: Any) -> str:
    """The text ``key`` in ``language`` with ``params`` filled in."""
    return TEXTS[language][key].format(**params)
