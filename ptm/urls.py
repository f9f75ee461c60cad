"""Registry URLs as people may see them: credentials never leave in a message, log or JSON.

``https://user:token@host/repo.git`` becomes ``https://user:***@host/repo.git``; a bare
``https://token@host/…`` (how tokens are often given) becomes ``https://***@host/…``. SSH user
names (``ssh://git@host/…``, ``git@host:repo``) are not secrets and stay.
"""

from __future__ import annotations

import re

HIDDEN = "***"
# scheme://userinfo@ — userinfo has no '/', '@' or whitespace (RFC 3986); stop at the last '@'
# before the host so that a '@' inside an (invalid) password is hidden too.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")
_TOKEN_SCHEMES = ("http://", "https://", "ftp://", "ftps://")


def redact_url(url: str) -> str:
    """``url`` with any password or token in it replaced by ``***``."""
    return _USERINFO.sub(_hide, url)


def redact_text(text: str) -> str:
    """Every URL inside ``text`` (a git error, a log message) redacted as by redact_url."""
    return _USERINFO.sub(_hide, text)


def has_credentials(url: str) -> bool:
    return redact_url(url) != url


def _hide(found: re.Match[str]) -> str:
    scheme, userinfo = found.group("scheme"), found.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}{user}:{HIDDEN}@"
    if scheme.lower() in _TOKEN_SCHEMES:
        return f"{scheme}{HIDDEN}@"
    return found.group(0)
