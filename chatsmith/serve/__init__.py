"""`chatsmith serve`: the OpenAI-compatible server (app.py), its request models (protocol.py), errors, the
guard in front of every route (guard.py), request preparation (prepare.py) and the web chat page (static/)."""
