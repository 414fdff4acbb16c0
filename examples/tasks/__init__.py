"""Example tasks, used by the cluster tests and ``make demo``.

Each module documents what it does at the top; every task is deterministic for a
given payload and attempt, so a test can assert on its outcome.
"""
