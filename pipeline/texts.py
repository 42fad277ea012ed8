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
            "no order for {days:.0f} days; usually one every {gap:.0f} days, "
            "longest pause in the past year {longest:.0f} days"
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
    },
    "zh-CN": {
        "separator": "；",
        "sales_drop.silence": (
            "已 {days:.0f} 天没有下单；通常每 {gap:.0f} 天下单一次，"
            "过去一年最长间隔 {longest:.0f} 天"
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
    },
}


def text(language: Language, key: str, **params: Any) -> str:
    """The text ``key`` in ``language`` with ``params`` filled in."""
    return TEXTS[language][key].format(**params)
