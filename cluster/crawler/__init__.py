"""The polite web crawler: the application that runs the crawler net (nets/scraper.py) on a
cluster: ``cpn crawl`` and ``cpn demo`` (crawl.py, demo.py), its workers (workers.py:
fetch.py, parse.py, store.py) and its report (report.py)."""
