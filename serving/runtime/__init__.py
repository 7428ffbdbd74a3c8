"""The live server's state: the loaded model and gallery, micro-batching, durable changes and ranking.

Below the HTTP layer: nothing here knows status codes or requests; failures are domain exceptions that
:mod:`serving.api.errors` turns into answers.
"""
