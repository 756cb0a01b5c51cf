"""Split inference as a service: Ray Serve deployments of the UE half and the edge half.

- :mod:`~splitlab.serve.config`: :class:`ServeConfig`, every setting of the service.
- :mod:`~splitlab.serve.profiles`: named channel profiles (``clean``, ``good``, ``fair``, ``poor``, ...).
- :mod:`~splitlab.serve.protocol`: OpenAI-style request checks (4xx naming the field).
- :mod:`~splitlab.serve.ue` / :mod:`~splitlab.serve.edge`: the two halves and the token loop between them.
- :mod:`~splitlab.serve.batching`: the in-replica scheduler that decodes concurrent requests as one batch.
- :mod:`~splitlab.serve.policy`: the split policy (exported policy weights, measured grid, the grid
  shipped in ``grids/`` by default, or fixed k).
- :mod:`~splitlab.serve.admission`: API keys, Host allow-list, the bounded queue (429/503).
- :mod:`~splitlab.serve.ingress`: the FastAPI ingress; :mod:`~splitlab.serve.responses`: OpenAI-shaped
  bodies and chunks; :mod:`~splitlab.serve.app`: the app builder.
- :mod:`~splitlab.serve.local`: run it all on 127.0.0.1 (``splitlab serve``).
"""
from splitlab.serve.config import ServeConfig
from splitlab.serve.profiles import CHANNEL_PROFILES

__all__ = ["CHANNEL_PROFILES", "ServeConfig"]
