"""The Lightning plumbing every callback shares: scoring passes, metric publishing, synchronisation, checks, loaders.

Imported by the callbacks (``tracker``, ``selection``, ``replay``, ``continual``), importing none of them.
"""
