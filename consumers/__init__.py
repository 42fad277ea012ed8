"""What reads the topics besides the worker: the warnings view, the archiver, the
consistency check, the alert dispatcher (``alerts``) and the web inbox (``web``)."""
