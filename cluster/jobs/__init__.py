"""The job runner: a second bundled application of the net runtime (docs/jobs.md).

Its net is ``nets/jobs.py``; this package holds what runs around it: the mock job API
(:mod:`cluster.jobs.mockapi`, with its call log in :mod:`cluster.jobs.mockapi_log`).
"""
