"""The agent in Faust's test context (memory store, no broker)."""

from __future__ import annotations

from unittest.mock import AsyncMock

import pytest

from churnwatch.settings import load_settings
from pipeline.app import create_app
from pipeline.events import DeadLetter, encode_event
from pipeline.features import StateBlock, decode_state


@pytest.fixture
def pipeline(tmp_path):
    # Wall clock: events apply at once. (In event mode they wait for a watermark,
    # which needs real topic offsets; the integration tests cover that path.)
    settings = load_settings(
        worker={"store": "memory://", "data_dir": str(tmp_path)}, clock={"mode": "wall"}
    )
    p = create_app(settings)
    p.app.finalize()
    p.app.conf.store = "memory://"
    p.app.flow_control.resume()
    return p


async def test_valid_event_updates_the_customer_state(pipeline, event_factory):
    order = event_factory("order", customer_id="C7", amount=250.0)
    agent = pipeline.app.agents["track_customers"]
    async with agent.test_context() as ctx:
        await ctx.put(encode_event(order), key=b"C7")
    state, _partition = decode_state(pipeline.states["C7"], StateBlock())
    assert state.orders_total == 1
    assert state.last_order_at == order.occurred_at.timestamp()


async def test_malformed_event_goes_to_dead_letters_and_the_next_is_processed(
    pipeline, event_factory
):
    sent = AsyncMock()
    pipeline.dead_letters.send = sent  # the sink only; the agent runs for real
    agent = pipeline.app.agents["track_customers"]
    good = event_factory("order", customer_id="C8")
    async with agent.test_context() as ctx:
        await ctx.put(b'{"type": "order_placed", "amount": "lots"', key=b"C8")
        await ctx.put(encode_event(good), key=b"C8")
    assert sent.await_count == 1
    letter = DeadLetter.model_validate_json(sent.await_args.kwargs["value"])
    assert "Invalid JSON" in letter.error or "json" in letter.error.lower()
    assert letter.payload.startswith('{"type": "order_placed"')
    state, _partition = decode_state(pipeline.states["C8"], StateBlock())
    assert state.orders_total == 1
