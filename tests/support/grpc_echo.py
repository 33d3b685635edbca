"""A gRPC echo service for tests, with no generated code: methods take and give raw bytes.

    /flux.test.Echo/Unary          request -> request (or an error: b"fail:CODE")
    /flux.test.Echo/ServerStream   request "N:text" -> N messages "text-i"
    /flux.test.Echo/ClientStream   messages -> their concatenation
    /flux.test.Echo/Bidi           each message -> "echo:" + message
    /flux.test.Echo/Slow           sleeps the request's number of milliseconds, then answers
Metadata `x-echo` comes back in the trailing metadata.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "flux.test.Echo"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    meta = dict(context.invocation_metadata())
    if "x-echo" in meta:
        context.set_trailing_metadata((("x-echo", meta["x-echo"]),))
    if request.startswith(b"fail:"):
        context.abort(grpc.StatusCode[request[5:].decode()], "asked to fail")
    return request


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, _, text = request.partition(b":")
    for i in range(int(count)):
        yield text + b"-%d" % i


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b"".join(requests)


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for message in requests:
        yield b"echo:" + message


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(int(request or b"0") / 1000)
    return b"done"


def serve(port: int = 0, max_message: int = 16 << 20) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", max_message)],
    )
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def stubs(channel: grpc.Channel) -> dict[str, object]:
    return {
        "Unary": channel.unary_unary(f"/{SERVICE}/Unary"),
        "ServerStream": channel.unary_stream(f"/{SERVICE}/ServerStream"),
        "ClientStream": channel.stream_unary(f"/{SERVICE}/ClientStream"),
        "Bidi": channel.stream_stream(f"/{SERVICE}/Bidi"),
        "Slow": channel.unary_unary(f"/{SERVICE}/Slow"),
    }
