"""The router package's shell: the modules that do I/O (files, signals, sockets, LMDB, clocks).

Everything else under ``router/`` is the functional core and may not import them;
``tests/unit/test_layering.py`` checks it. The shard and the cluster use these too: the
data directory's endpoint file and lock, fault points, and CURVE security.
"""
