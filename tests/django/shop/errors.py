class ShopError(Exception):
    """Raised by a task on purpose: its class path must reach Django's TaskError."""
