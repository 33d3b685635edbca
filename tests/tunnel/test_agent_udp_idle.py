"""The agent's UDP peers (tunnelclient.agent): a peer idle for UDP_IDLE is dropped (its socket
closed), a busy one kept. Time is trio's MockClock, which is also the agent's injected clock:
a real local UDP service on real sockets, no waiting in real time."""

from __future__ import annotations

import trio
import trio.testing

from fluxcommon.tunnel.protocol.mux import UdpPacket
from tunnelclient.agent import UDP_IDLE, Agent, ProxyState, udp_peer_idle
from tunnelclient.config.model import AgentConfig


def test_udp_peer_idle_is_at_udp_idle() -> None:
    assert not udp_peer_idle(100.0, 100.0)
    assert not udp_peer_idle(100.0, 100.0 + UDP_IDLE - 0.001)
    assert udp_peer_idle(100.0, 100.0 + UDP_IDLE)
    assert udp_peer_idle(100.0, 100.0 + 10 * UDP_IDLE)


async def _echo(sock: trio.socket.SocketType) -> None:
    while True:
        data, addr = await sock.recvfrom(65535)
        await sock.sendto(data, addr)


def test_an_idle_udp_peer_is_dropped_and_a_busy_one_kept() -> None:
    async def main() -> None:
        agent = Agent(AgentConfig(), clock=trio.current_time)
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as local:
            await local.bind(("127.0.0.1", 0))
            state = ProxyState(None, "dns", "udp", "127.0.0.1", local.getsockname()[1])
            agent.proxies["dns"] = state
            async with trio.open_nursery() as nursery:
                agent.nursery = nursery
                nursery.start_soon(_echo, local)
                start = trio.current_time()
                agent._udp_to_local(UdpPacket("dns", "1.2.3.4:5000", b"once"))
                agent._udp_to_local(UdpPacket("dns", "5.6.7.8:6000", b"first"))
                idle_sock = state.udp_peers["1.2.3.4:5000"][1]
                # the busy peer sends every 10 s for a bit longer than UDP_IDLE
                while trio.current_time() - start < UDP_IDLE + 5:
                    await trio.sleep(10)  # MockClock: virtual time, the busy peer's pace
                    agent._udp_to_local(UdpPacket("dns", "5.6.7.8:6000", b"again"))
                assert set(state.udp_peers) == {"5.6.7.8:6000"}
                assert idle_sock.fileno() == -1  # its socket was closed
                assert state.bytes_out == 0  # no link: the echoes were not sent on
                busy_seen = trio.current_time()
                await trio.sleep(2 * UDP_IDLE)  # now it is idle too (MockClock: virtual time)
                assert not state.udp_peers
                assert trio.current_time() - busy_seen >= UDP_IDLE
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
