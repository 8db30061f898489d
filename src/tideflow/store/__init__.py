"""Storage: the store protocol and its SQL implementations (all SQL lives here)."""
