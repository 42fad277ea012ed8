"""``churnwatch demo``: the whole pipeline on loopback (:func:`churnwatch.demo.run.run_demo`).

``run`` starts and watches the parts, ``setup`` prepares the model, the clock
and the web logins, ``tally`` counts what happened and writes the summary.
"""
