"""Live streams served over WebSocket (``python -m train serve``), with a browser page and a client.

- ``protocol.py``: the wire contract (messages in and out, limits, errors);
- ``backends.py``: what is stepped: a checkpoint's ``StreamingDecoder`` or an exported artifact;
- ``batcher.py``: slots of streams, featurized and chunked as audio arrives, one compiled step for all;
- ``server.py``: the aiohttp server (page, socket, backpressure, refusals, SIGTERM drain);
- ``client.py``: the streaming client (``python -m train client``, the load benchmark's generator);
- ``static/``: the page and its AudioWorklet.
"""
