"""SQL stores: portable statements in ``base``, one file per dialect."""
