"""Secrets kept out of logs and error messages: URLs with their password masked."""

from __future__ import annotations

from urllib.parse import urlsplit


def masked_url(url: str) -> str:
    """``url`` with its password (userinfo or ``password=`` parameter) replaced by ``***``.

    >>> masked_url("redis://user:secret@host:6379/0"), masked_url("redis://:secret@host")
    ('redis://user:***@host:6379/0', 'redis://:***@host')
    >>> masked_url("rediss://host/0?ssl_cert_reqs=none&password=secret")
    'rediss://host/0?ssl_cert_reqs=none&password=***'
    """
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:  # unparsable (a bad IPv6 host, say): hide all but the scheme
        return url.partition("://")[0] + "://***"
    scheme, slashes, rest = url.partition("//")
    if not slashes:
        scheme, rest = "", url
    if has_password:
        # the last '@' ends the userinfo: a password may contain '@' itself
        userinfo, _, hostport = parts.netloc.rpartition("@")
        rest = f"{userinfo.partition(':')[0]}:***@{hostport}" + rest[len(parts.netloc) :]
    # rebuilt by hand: urlunsplit would turn unix:///path into unix:/path
    before, hash_, fragment = rest.partition("#")
    path, question, query = before.partition("?")
    query = "&".join(_masked_param(p) for p in query.split("&"))
    return f"{scheme}{slashes}{path}{question}{query}{hash_}{fragment}"


def _masked_param(param: str) -> str:
    name, sep, _ = param.partition("=")
    return f"{name}=***" if sep and name.lower() == "password" else param
