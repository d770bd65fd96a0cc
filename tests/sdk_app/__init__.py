"""A user's application as the worker SDK's tests run it: a net (net.py) and its
workers (workers.py), imported by the cluster's processes from this directory."""
