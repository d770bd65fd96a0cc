"""The mock web: a seeded site model (site.py) served over real HTTP on loopback
(server.py, web.py), an HTTP proxy (proxy.py), and the request log its politeness
measurement reads (log.py). See docs/mockweb.md."""
