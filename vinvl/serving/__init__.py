"""The HTTP retrieval service: PaddleNLP's SimpleServer answering through the query core
(:mod:`vinvl.serving.server`, imported on its own: it needs FastAPI), its request parsing and a client."""
