"""The sales team's web inbox (``churnwatch web``); see docs/web.md."""
