"""An HTTPS upstream for tests (Python ssl in threads): answers every request with JSON naming
the path, the SNI it was reached by and the client certificate's subject (mutual TLS)."""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import tempfile
import threading


class TlsUpstream:
    def __init__(self, cert_pem: str, key_pem: str, *, client_ca: str = "") -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "chain.pem"
            path.write_text(cert_pem + key_pem)
            self.ctx.load_cert_chain(path)
        if client_ca:
            self.ctx.load_verify_locations(cadata=client_ca)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda _obj, name, _ctx: self.sni.append(name)  # type: ignore[assignment,func-returns-value]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.handshakes = 0
        self.failures: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TlsUpstream:
        self._thread.start()
        return self

    def endpoint(self) -> dict[str, object]:
        return {"address": "127.0.0.1", "port": self.port}

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.failures.append(str(exc))
            raw.close()
            return
        self.handshakes += 1
        peer = conn.getpeercert()
        subject = ",".join(f"{k}={v}" for rdn in (peer or {}).get("subject", ()) for k, v in rdn)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                body = json.dumps({"path": path, "client": subject, "tls": conn.version()}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(body), body))  # fmt: skip
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
