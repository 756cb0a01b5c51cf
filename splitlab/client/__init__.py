"""The device side of split inference: run the first k layers locally, send activations, get tokens.

- :mod:`~splitlab.client.device`: :class:`DeviceClient` (Python API behind ``splitlab ue``).
- :mod:`~splitlab.client.transport`: WebSocket and HTTP streams to the edge's activation routes.
- :mod:`~splitlab.client.link_emulator`: a loopback proxy that adds delay and a rate limit (an emulated radio link).
"""
from splitlab.client.device import DeviceClient, DeviceGeneration, DeviceStats

__all__ = ["DeviceClient", "DeviceGeneration", "DeviceStats"]
