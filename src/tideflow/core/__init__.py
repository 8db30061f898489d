"""Pure domain logic: no I/O, no threads."""
