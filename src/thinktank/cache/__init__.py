"""The response cache of every model: exact (the same canonical request of the same tenant) and, for models
that opt in, semantic (a question meaning the same, guarded against near-misses).

``config`` (the YAML ``cache:`` section), ``keys`` (canonical requests), ``policy`` (request headers),
``entry`` (a cached answer, either shape), ``stores`` (memory, database, Redis), ``guards`` and ``semantic``
(the semantic layer), ``service`` (the cache the API uses). Nothing is imported here: the configuration
imports ``config`` alone.
"""
