"""The Bumble radio bus the simulated SmartBall is served on, and how a link dies on it.

Bumble's ``LocalLink`` is an in-memory bus between Bumble controllers: advertising PDUs,
LL control PDUs and ACL data are handed over with ``call_soon``, so nothing costs airtime
and a link has no supervision timeout (it ends only when someone terminates it).
"""

from __future__ import annotations

import asyncio
import logging

from bumble import core, hci
from bumble.controller import Controller
from bumble.link import LocalLink

log = logging.getLogger("sim.bumble.link")


class SmartBallLink(LocalLink):
    """``LocalLink`` that routes LE ACL data by the connection's own address.

    Bumble's ``LocalLink.send_acl_data`` names the sender of LE data by the sending
    controller's *random* address. A central that scans with a random address and then
    connects with its public one (what the Linux kernel does through a vhci controller)
    has a connection whose address is the public one, so the peripheral finds no
    connection for the data and drops all of it. Here the source is the address the
    sender's connection to that peer uses, whatever its type.
    """

    def send_acl_data(
        self,
        sender_controller: Controller,
        destination_address: hci.Address,
        transport: core.PhysicalTransport,
        data: bytes,
    ) -> None:
        connection = (
            sender_controller.le_connections.get(destination_address)
            if transport == core.PhysicalTransport.LE
            else None
        )
        if connection is None or connection.self_address == sender_controller.random_address:
            super().send_acl_data(sender_controller, destination_address, transport, data)
            return
        destination = self.find_le_controller(destination_address)
        if destination is not None:
            asyncio.get_running_loop().call_soon(
                destination.on_link_acl_data, connection.self_address, transport, data
            )


def sever(controller: Controller, peer_address: hci.Address, reason: int) -> bool:
    """End an LE connection without a word on air, as a lost link ends: both controllers
    report Disconnection Complete with ``reason`` to their hosts at once. (A real link
    would notice after its supervision timeout; ``LocalLink`` has none.) False when the
    connection was already gone."""
    connection = controller.le_connections.get(peer_address)
    if connection is None:
        return False
    controller.on_le_disconnected(connection, reason)
    peer = controller.link.find_le_controller(peer_address) if controller.link else None
    if peer is not None:
        peer_connection = peer.le_connections.get(connection.self_address)
        if peer_connection is not None:
            peer.on_le_disconnected(peer_connection, reason)
    return True
