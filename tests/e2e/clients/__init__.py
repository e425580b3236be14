"""Scripts that drive the gateway with the standard clients of the Open Inference Protocol.

They run in the clients' own virtual environment (`make clients`: .venv-clients), never
imported by the suite: each reads its settings as JSON on stdin and prints what the
client returned or raised as JSON on stdout, for tests/e2e/test_standard_clients.py.
"""
