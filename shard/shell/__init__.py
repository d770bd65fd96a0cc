"""The shard package's shell: LMDB (the store and its reader), sockets (peers) and the loop.

Everything else under ``shard/`` is core: it takes ``now_ms`` as an argument and never
reads a clock, opens a file or touches a socket (``tests/unit/test_layering.py``).
"""
