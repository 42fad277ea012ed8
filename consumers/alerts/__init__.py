"""The alert dispatcher: warnings to the right people, without noise, with a ledger."""
