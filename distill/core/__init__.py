"""Small pieces every stage shares and none owns: atomic writes, hashing, JSON files, output kinds.

Nothing here imports another part of Distill (except :mod:`distill.errors`), so any stage can
depend on it without creating a loop.
"""
