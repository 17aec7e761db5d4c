"""Transports and wire formats: bytes from the network in, syslog messages out.

The framers and the syslog parser are sans-I/O (no sockets, asyncio or clock); the asyncio
listeners in udp.py and tcp.py are thin adapters around them.
"""
