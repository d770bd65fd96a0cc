"""``cpn dashboard``: a live web page of a running cluster (docs/observability.md, "Dashboard").

* :mod:`cluster.dashboard.snapshot`: what the page shows, and firing rates (pure);
* :mod:`cluster.dashboard.sampler`: the one thread that reads the cluster (shell);
* :mod:`cluster.dashboard.server`: the HTTP server and its routes (shell);
* ``static/``: the page, its script and its style, shipped in the wheel.
"""
