"""MAGNET serving: FastAPI app over a verified bundle (FAISS top-K, explanations, cache).

Entry points: `service.app.create_app(settings)` and `service.server.serve(bundle, host, port)`.
"""
