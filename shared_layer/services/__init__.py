"""Services: keyword-only functions that take a session, add/flush, and raise `StratusError`s."""
