"""The static_file plugin: files under ``localPath`` over HTTP/1.1 (GET and HEAD).

URLs start with ``/stripPrefix/`` (or ``/``); the rest, percent-decoded, names a file under
``localPath``. Nothing outside ``localPath`` is ever served: the path is resolved (``..``,
symlinks) and must stay inside the resolved ``localPath``, else 404. A directory answers its
``index.html``, or a listing of the entries that stay inside; a directory URL without its
trailing slash is redirected to it. ``httpUser``/``httpPassword`` ask for Basic auth (401).
"""

from __future__ import annotations

import email.utils
import html
import logging
import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import h11
import trio

from tunnelclient.plugin_config import PluginConfig
from tunnelclient.plugins.h11conn import H11Stream, basic_auth_ok, header, reason

log = logging.getLogger("flux.tunnel.plugin")

CHUNK = 64 * 1024
AUTH_FAIL_DELAY = 0.2


class StaticFilePlugin:
    def __init__(self, config: PluginConfig) -> None:
        self.root = Path(config.local_path).resolve()
        self.prefix = f"/{config.strip_prefix}/" if config.strip_prefix else "/"
        self.user, self.password = config.user, config.password

    async def handle(self, stream: trio.abc.Stream, meta: dict[str, Any]) -> None:
        client = H11Stream(stream, h11.SERVER)
        try:
            while True:
                request = await client.next_event()
                if not isinstance(request, h11.Request):
                    return
                while not isinstance(await client.next_event(), h11.EndOfMessage | h11.ConnectionClosed):
                    pass  # a GET's body (if any) is not read
                await self._answer(client, request)
                if not client.reusable():
                    return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("static_file plugin: %s", exc)
        finally:
            await client.aclose()

    def _authorized(self, request: h11.Request) -> bool:
        return basic_auth_ok(header(request.headers, b"authorization"), self.user, self.password)

    async def _answer(self, client: H11Stream, request: h11.Request) -> None:
        if not self._authorized(request):
            await trio.sleep(AUTH_FAIL_DELAY)
            await client.respond(401, [(b"www-authenticate", b'Basic realm="Restricted"')], b"unauthorized\n")
            return
        if request.method not in (b"GET", b"HEAD"):
            await client.respond(405, [(b"allow", b"GET, HEAD")], b"method not allowed\n")
            return
        path = urlsplit(request.target.decode("latin-1")).path
        if not path.startswith(self.prefix):
            await client.respond(404, [], b"not found\n")
            return
        found = self.locate(unquote(path[len(self.prefix) :]))
        if found is None:
            await client.respond(404, [], b"not found\n")
        elif found.is_dir() and not path.endswith("/"):
            await client.respond(301, [(b"location", (quote(path) + "/").encode())], b"")
        elif found.is_dir() and (found / "index.html").is_file() and self.locate_in(found / "index.html"):
            await self._file(client, request, found / "index.html")
        elif found.is_dir():
            await client.respond(200, [(b"content-type", b"text/html; charset=utf-8")], self._listing(found, path))
        else:
            await self._file(client, request, found)

    def locate(self, relative: str) -> Path | None:
        """The file or directory `relative` names under the root, resolved; None outside it."""
        if "\x00" in relative:
            return None
        return self.locate_in(self.root / relative.lstrip("/"))

    def locate_in(self, candidate: Path) -> Path | None:
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return resolved if resolved == self.root or resolved.is_relative_to(self.root) else None

    def _listing(self, directory: Path, url: str) -> bytes:
        names = sorted(
            e.name + ("/" if e.is_dir() else "") for e in directory.iterdir() if self.locate_in(e) is not None
        )
        items = "".join(f'<a href="{quote(n)}">{html.escape(n)}</a>\n' for n in names)
        return f"<!doctype html>\n<title>{html.escape(url)}</title>\n<pre>\n{items}</pre>\n".encode()

    async def _file(self, client: H11Stream, request: h11.Request, path: Path) -> None:
        try:
            f = await trio.open_file(path, "rb")
        except OSError:
            await client.respond(404, [], b"not found\n")
            return
        async with f:
            st = os.fstat(f.fileno())
            modified = email.utils.formatdate(st.st_mtime, usegmt=True).encode()
            since = header(request.headers, b"if-modified-since")
            if since is not None and _not_modified(since, st.st_mtime):
                await client.send(
                    h11.Response(status_code=304, headers=[(b"last-modified", modified)], reason=reason(304))
                )
                await client.send(h11.EndOfMessage())
                return
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            headers = [(b"content-type", kind.encode()), (b"content-length", str(st.st_size).encode()),
                       (b"last-modified", modified)]  # fmt: skip
            await client.send(h11.Response(status_code=200, headers=headers, reason=reason(200)))
            if request.method == b"GET":
                while chunk := await f.read(CHUNK):
                    await client.send(h11.Data(data=chunk))
            await client.send(h11.EndOfMessage())


def _not_modified(since: bytes, mtime: float) -> bool:
    try:
        when = email.utils.parsedate_to_datetime(since.decode("latin-1"))
    except (TypeError, ValueError):
        return False
    return when is not None and int(mtime) <= when.timestamp()
