"""A small test node for `flux.v1.DiscoveryService/StreamConfig` (sync gRPC, one thread per stream).

It subscribes as {id, group}, records every push (version, nonce, decoded Snapshot,
arrival time) and answers each one: ACK by default, NACK when `nack_if(version)` says
so, or nothing when `auto_ack=False` (then the test calls `ack`/`nack` itself).

It connects over mutual TLS like a node: with `credentials`, or enrolled on its own
(support.enrolment) as `node_id` in `group`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from dataplane.discovery.credentials import NodeCredentials, channel_options
from flux.v1 import config_pb2, discovery_pb2, discovery_pb2_grpc
from support.enrolment import credentials_for

SNAPSHOT_TYPE_URL = "type.googleapis.com/flux.v1.Snapshot"


@dataclass(frozen=True)
class Push:
    version: str
    nonce: str
    snapshot: config_pb2.Snapshot
    control_plane_id: str
    type_url: str
    received_at: float  # time.monotonic()

    @property
    def version_int(self) -> int:
        return int(self.version)


class DiscoveryClient:
    def __init__(
        self,
        address: str,
        node_id: str,
        group: str = "default",
        *,
        held_version: str = "",
        auto_ack: bool = True,
        nack_if: Callable[[Push], str | None] | None = None,
        hostname: str = "test-host",
        credentials: NodeCredentials | None = None,
    ) -> None:
        self.address = address
        self.credentials = credentials
        self.node_id = node_id
        self.group = group
        self.held_version = held_version  # last version ACKed (or given at start)
        self.auto_ack = auto_ack
        self.nack_if = nack_if
        self.hostname = hostname
        self._requests: queue.Queue[discovery_pb2.StreamConfigRequest | None] = queue.Queue()
        self._pushes: list[Push] = []
        self._manual: queue.Queue[Push] = queue.Queue()
        self._cond = threading.Condition()
        self._channel: grpc.Channel | None = None
        self._call: grpc.Future | None = None
        self._thread: threading.Thread | None = None
        self.error: grpc.RpcError | None = None
        self.closed = False
        self.acks: list[str] = []
        self.nacks: list[tuple[str, str]] = []

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> DiscoveryClient:
        creds = self.credentials or credentials_for(self.address, self.node_id, self.group)
        self._channel = grpc.secure_channel(self.address, creds.channel_credentials(), options=channel_options())
        stub = discovery_pb2_grpc.DiscoveryServiceStub(self._channel)
        self._requests.put(
            discovery_pb2.StreamConfigRequest(
                version_info=self.held_version,
                node=discovery_pb2.Node(
                    id=self.node_id, group=self.group, hostname=self.hostname, build_version="test"
                ),
                type_url=SNAPSHOT_TYPE_URL,
            )
        )
        self._call = stub.StreamConfig(self._request_iter())
        self._thread = threading.Thread(target=self._read, name=f"discovery-{self.node_id}", daemon=True)
        self._thread.start()
        return self

    def _request_iter(self) -> Iterator[discovery_pb2.StreamConfigRequest]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _read(self) -> None:
        assert self._call is not None
        try:
            for resp in self._call:
                snap = config_pb2.Snapshot()
                assert len(resp.resources) == 1, f"expected one resource, got {len(resp.resources)}"
                assert resp.resources[0].type_url == SNAPSHOT_TYPE_URL, resp.resources[0].type_url
                resp.resources[0].Unpack(snap)
                push = Push(
                    version=resp.version_info,
                    nonce=resp.nonce,
                    snapshot=snap,
                    control_plane_id=resp.control_plane_id,
                    type_url=resp.type_url,
                    received_at=time.monotonic(),
                )
                with self._cond:
                    self._pushes.append(push)
                    self._cond.notify_all()
                if not self.auto_ack:
                    self._manual.put(push)
                    continue
                reason = self.nack_if(push) if self.nack_if else None
                if reason:
                    self.nack(push, reason)
                else:
                    self.ack(push)
        except grpc.RpcError as exc:
            if not self.closed:
                self.error = exc
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def close(self) -> None:
        self.closed = True
        self._requests.put(None)
        if self._call is not None:
            self._call.cancel()
        if self._thread is not None:
            self._thread.join(5)
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> DiscoveryClient:
        return self if self._call is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answers -----------------------------------------------------------------------

    def ack(self, push: Push) -> None:
        self.held_version = push.version
        self.acks.append(push.version)
        self._requests.put(
            discovery_pb2.StreamConfigRequest(
                version_info=push.version, response_nonce=push.nonce, type_url=SNAPSHOT_TYPE_URL
            )
        )

    def nack(self, push: Push, message: str) -> None:
        self.nacks.append((push.version, message))
        self._requests.put(
            discovery_pb2.StreamConfigRequest(
                version_info=self.held_version,  # the last good one
                response_nonce=push.nonce,
                type_url=SNAPSHOT_TYPE_URL,
                error_detail=discovery_pb2.ErrorDetail(code=3, message=message),
            )
        )

    # -- what arrived --------------------------------------------------------------------

    @property
    def pushes(self) -> list[Push]:
        with self._cond:
            return list(self._pushes)

    @property
    def versions(self) -> list[int]:
        return [p.version_int for p in self.pushes]

    @property
    def latest(self) -> Push | None:
        with self._cond:
            return self._pushes[-1] if self._pushes else None

    def next_push(self, timeout: float = 5.0) -> Push:
        """The next push not yet answered (only with auto_ack=False)."""
        assert not self.auto_ack, "next_push() is for auto_ack=False clients"
        try:
            return self._manual.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.node_id}: no push within {timeout}s (have {self.versions}, error {self.error!r})"
            ) from None

    def wait_for(self, predicate: Callable[[list[Push]], bool], timeout: float = 5.0) -> list[Push]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._pushes):
                left = deadline - time.monotonic()
                if left <= 0 or (self.closed and not predicate(self._pushes)):
                    raise AssertionError(
                        f"{self.node_id}: condition not met within {timeout}s; "
                        f"versions {[p.version for p in self._pushes]}, closed={self.closed}, "
                        f"error={self.error!r}"
                    )
                self._cond.wait(min(left, 0.5))
            return list(self._pushes)

    def wait_for_version(self, version: int, timeout: float = 5.0) -> Push:
        """Wait until the newest push is `version` or newer; return that push."""
        pushes = self.wait_for(lambda ps: bool(ps) and ps[-1].version_int >= version, timeout)
        return pushes[-1]

    def wait_for_pushes(self, count: int, timeout: float = 5.0) -> list[Push]:
        return self.wait_for(lambda ps: len(ps) >= count, timeout)
