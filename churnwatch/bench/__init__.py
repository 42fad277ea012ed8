"""``churnwatch bench``: how fast one worker (and two) drains a history, on this machine.

Starts its own embedded broker on a free port, pre-produces a simulated history
(``--customers``, ``--days``) and measures, in the same run and on the same
topics:

- a bare loop: aiokafka consume + JSON decode + a dict update per event, the
  ceiling any Python consumer on this broker can reach;
- a do-nothing Faust agent with the worker's consumer settings (JSON decode,
  ack per batch): what Faust's per-message delivery costs before churnwatch
  does anything, the ceiling of any worker built on Faust streams;
- ``churnwatch worker`` (model serving on unless ``--no-model``) draining the
  same history, from its first processed batch to its last, with its RSS and
  the bytes of state it stores per customer (the changelog's last record per
  customer, and the store folder), and the cores it and the broker kept busy
  (CPU time over the drain's wall time: on a machine with few cores, whether
  a second worker can add anything), and the most events it held at once for
  the watermark (``waiting``: the reorder buffer's peak, about 2 KB an event);
- with ``--workers 2``, two workers in one consumer group;
- then the last ``--live-days`` of the history produced live at
  ``--live-rate`` events/s, for the event-to-warning latency (from the
  broker's timestamp of the event that let a sweep run to the warning sent,
  read from the worker's latency histogram: bucket bounds, so "<= x s").

Prints a table and, with ``--json PATH``, writes the figures as JSON.

``--backtest`` times the batch path instead (no broker): ``churnwatch
backtest``'s work on the same simulated history, with the walk-forward model
unless ``--no-model`` (``--customers 4600 --days 540`` is about a million events).
"""
