"""The retrieval server and its offline jobs, in wings, lowest first.

* ``core/`` -- foundations: settings, logging, OpenCV limits, image decoding, source paths;
* ``embedders/`` -- the model behind one interface (ONNX Runtime, TensorRT, Triton, torch);
* ``runtime/`` -- what a live server holds: the durable gallery, micro-batching, ranking, metrics;
* ``indexing/`` -- the offline jobs: crawl and index crops, gallery maintenance;
* ``api/`` -- HTTP: routes, the mapping of domain errors to status codes, middleware, connection limits, pages.

``app.py`` builds the FastAPI app from ``api`` and ``runtime``; ``server.py`` runs it (``python -m serving serve``).
"""
