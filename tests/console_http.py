"""Console pages over real HTTP as a signed-in role: GET a page, read its CSRF token, post a form."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlencode

import raw_http
from conftest import ADMIN, Gateway
from console_roles import role_cookie

Reply = raw_http.Reply
_CSRF = re.compile(rb'name="csrf" value="([0-9a-f]*)"')


class Browser:
    """One role's session: its cookie on every request, redirects not followed."""

    def __init__(self, gw: Gateway, role: str, name: str | None = None) -> None:
        self.gw = gw
        self.cookie = role_cookie(ADMIN, name or role, role)

    def get(self, path: str) -> Reply:
        return raw_http.request(self.gw.port, "GET", path, None, {"Cookie": self.cookie})

    def csrf(self, path: str = "/console/") -> str:
        """The CSRF token a page of this session carries."""
        status, page, _ = self.get(path)
        found = _CSRF.search(page)
        assert found is not None, (status, page[:500])
        return found.group(1).decode()

    def post(self, path: str, fields: dict[str, str], csrf: bool = True, headers: dict[str, str] | None = None
             ) -> Reply:
        data = {**({"csrf": self.csrf()} if csrf else {}), **fields}
        return raw_http.request(self.gw.port, "POST", path, urlencode(data).encode(),
                                {"Cookie": self.cookie, "Content-Type": "application/x-www-form-urlencoded",
                                 **(headers or {})})


def text(page: bytes) -> str:
    """The page's text without tags (to assert on sentences)."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", page.decode())))
