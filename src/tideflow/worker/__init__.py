"""The worker runtime: claim loop, executors, heartbeats, group commit."""
