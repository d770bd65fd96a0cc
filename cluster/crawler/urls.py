"""Canonical URLs for the crawler (pure): one spelling per page, its domain, link resolution.

The crawler's net deduplicates by URL (its ``seen`` place) and keys every place by the
URL's domain, so every URL that enters it must be canonical: two spellings of one page
must become the same string, and the domain must be the same for all of a host's pages.

Theory of operation (built on :mod:`urllib.parse`, never on string hacks):

* only ``http`` and ``https`` URLs with a host are kept; anything else is not crawlable;
* the scheme and the host are lowercased, the default port (80 for http, 443 for https)
  is dropped, user information is kept out (a crawler never sends credentials);
* the fragment is dropped (it never reaches the server);
* an empty path becomes ``/``; the path and query are kept as written (their case
  matters to servers), except that ``.`` and ``..`` segments are resolved;
* the domain is the canonical URL's netloc (``host`` or ``host:port``), as
  ``urlsplit(url).netloc`` gives it.
"""

from __future__ import annotations

import posixpath
from functools import lru_cache
from typing import Final
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

SCHEMES: Final = {"http": 80, "https": 443}
URL_CHARS_MAX: Final = 2_048  # longer URLs are refused (servers and LMDB keys have limits)
# Links resolved lately, by (base, href): most links of a site's pages are to the same
# pages (a menu, a sibling), and a fetch worker resolves every link of every page.
RESOLVED_CACHED_MAX: Final = 8_192


class InvalidUrl(ValueError):
    """A URL the crawler cannot fetch; the message says why."""


def canonical_url(url: str) -> str:
    """The canonical form of the absolute ``url``.

    Raises:
        InvalidUrl: not an absolute http(s) URL with a host, a bad port, or too long.
    """
    text = url.strip()
    if len(text) > URL_CHARS_MAX:
        raise InvalidUrl(f"URL longer than {URL_CHARS_MAX} characters: {text[:60]}...")
    if any(ch in text for ch in "\x00\r\n\t "):
        raise InvalidUrl(f"URL {text[:80]!r} contains whitespace or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"URL {text[:80]!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidUrl(f"URL {text[:80]!r}: scheme {scheme or '(none)'!r} is not http or https")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidUrl(f"URL {text[:80]!r} has no host")
    if ":" in host:  # an IPv6 literal keeps its brackets in a netloc
        host = f"[{host}]"
    netloc = host if port is None or port == SCHEMES[scheme] else f"{host}:{port}"
    path = _normal_path(parts.path)
    return urlunsplit(SplitResult(scheme, netloc, path, parts.query, ""))


def _normal_path(path: str) -> str:
    if not path:
        return "/"
    if "/." not in path and not path.startswith("."):
        return path
    # posixpath.normpath resolves . and .. but also drops a trailing slash, which
    # matters to servers ("/a/" is not "/a"): put it back.
    normal = posixpath.normpath("/" + path.lstrip("/"))
    normal = "/" + normal.lstrip("/")  # normpath keeps a leading "//"
    if path.endswith(("/", "/.", "/..")) and not normal.endswith("/"):
        normal += "/"
    return normal


def domain_of(canonical: str) -> str:
    """The domain (netloc) of a canonical URL."""
    return urlsplit(canonical).netloc


def resolve_link(base: str, href: str) -> str | None:
    """The canonical absolute URL of ``href`` found on the page at ``base``.

    None when the link is not crawlable (another scheme such as ``mailto:``, a
    fragment-only link, or malformed).
    """
    href = href.strip()
    if not href or href.startswith("#"):
        return None
    if href.startswith("/") and not href.startswith("//"):
        # A root-relative link reads only the base's scheme and host: resolved against
        # them, it is the same look-up from every page of the site.
        scheme_end = base.find("://")
        path_start = base.find("/", scheme_end + 3) if scheme_end > 0 else -1
        if path_start > 0:
            base = base[: path_start + 1]
    return _resolved(base, href)


@lru_cache(maxsize=RESOLVED_CACHED_MAX)
def _resolved(base: str, href: str) -> str | None:
    try:
        return canonical_url(urljoin(base, href))
    except (InvalidUrl, ValueError):
        return None


def robots_url(canonical: str) -> str:
    """The robots.txt URL of a canonical URL's site."""
    parts = urlsplit(canonical)
    return f"{parts.scheme}://{parts.netloc}/robots.txt"
