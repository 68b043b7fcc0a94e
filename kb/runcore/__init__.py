"""The run core: what every resumable command (eval.run, attacks.generate, agent runs) shares.

It sits in ``kb`` so that ``attacks`` and ``eval`` both build on it without importing each
other: the append-only JSONL item log and its torn-line-tolerant reader, strict atomic JSON,
the folder-identity guard, mention selection, and item preparation (candidate set + texts).
"""
