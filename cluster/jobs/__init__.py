"""The job runner: a second bundled application of the net runtime (docs/jobs.md).

Its net is ``nets/jobs.py``; this package holds what runs around it: the worker
(:mod:`cluster.jobs.worker`, ``cpn worker run cluster.jobs.worker:run_job``), the mock
job API (:mod:`cluster.jobs.mockapi`, with its call log in :mod:`cluster.jobs.mockapi_log`)
and ``cpn demo jobs`` (:mod:`cluster.jobs.demo`, its report in :mod:`cluster.jobs.report`).
"""
