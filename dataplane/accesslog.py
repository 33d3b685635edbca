"""JSON access log, one line per request, written in batches.

The hot path appends a finished line to a list; a background task writes the
batch to the file descriptor (stdout by default) every 100 ms from a worker
thread, so a slow log reader never blocks traffic. If the backlog passes
`max_backlog` lines, new lines are dropped and counted instead of growing
memory without bound. Each line holds the request's `trace_id` when tracing
is on (the OTEL_* variables; dataplane.exchange.trace).
"""

from __future__ import annotations

import json
import os
import stat
import time

import trio

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _q(text: str) -> str:
    """JSON string literal; the common case (nothing to escape) skips the encoder."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    return _dumps(text)


def _never_blocks(fd: int) -> bool:
    """Whether writes to `fd` finish at once (a regular file or /dev/null, not a pipe or terminal)."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return True
        return stat.S_ISCHR(mode) and os.path.samefile(f"/proc/self/fd/{fd}", os.devnull)
    except OSError:
        return False


class AccessLog:
    def __init__(self, fd: int | None = 1, *, max_backlog: int = 100_000) -> None:
        self.fd = fd
        self.lines: list[str] = []
        self.max_backlog = max_backlog
        self.dropped = 0
        self.written = 0
        self._second = 0
        self._stamp = ""
        self._regular: bool | None = None

    @property
    def enabled(self) -> bool:
        return self.fd is not None

    def log(
        self,
        request_id: bytes,
        client: str,
        method: str,
        host: str,
        path: str,
        route: str,
        cluster: str,
        upstream: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        consumer: str = "",
        error: str = "",
        client_cert: str = "",
        trace_id: str = "",
    ) -> None:
        # client, method, route, cluster and upstream are validated tokens (IP, method,
        # resource names, host:port); only client-controlled text goes through _q.
        if self.fd is None:
            return
        if len(self.lines) >= self.max_backlog:
            self.dropped += 1
            return
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = (
            f'{{"ts":"{self._stamp}.{int((t - second) * 1000):03d}Z","request_id":{_q(request_id.decode("latin-1"))},'
            f'"client":"{client}","method":"{method}","host":{_q(host)},"path":{_q(path)},'
            f'"route":"{route}","cluster":"{cluster}","upstream":"{upstream}","status":{status},'
            f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},"duration_ms":{duration * 1000:.3f}'
        )
        if consumer:
            line += f',"consumer":{_q(consumer)}'
        if error:
            line += f',"error":{_q(error)}'
        if client_cert:
            line += f',"client_cert":{_q(client_cert)}'
        if trace_id:  # 32 hex digits: nothing to escape
            line += f',"trace_id":"{trace_id}"'
        self.lines.append(line + "}")

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    async def flush(self) -> None:
        if not self.lines or self.fd is None:
            return
        batch, self.lines = self.lines, []
        data = ("\n".join(batch) + "\n").encode()
        try:
            if self._regular is None:
                self._regular = _never_blocks(self.fd)
            if self._regular:
                self._write(data)  # a local file never blocks for long: no thread hop
            else:
                await trio.to_thread.run_sync(self._write, data)  # a pipe or terminal may
            self.written += len(batch)
        except OSError:
            self.dropped += len(batch)

    async def run(self, interval: float = 0.1) -> None:
        try:
            while True:
                await trio.sleep(interval)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()
