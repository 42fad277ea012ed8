"""The bottom layer: what every other package stands on.

Settings (``settings``), topic names and topic administration (``topics``),
the embedded broker (``broker``), a local SMTP inbox for the demo and the
tests (``inbox``) and the model registry's file format (``registry``).
Nothing here imports ``pipeline``, ``producers``, ``consumers``, ``models``
or the CLI; ``make check`` enforces it (the ``[tool.importlinter]`` contracts
in pyproject.toml).
"""
