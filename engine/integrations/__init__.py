"""Bridges from agent frameworks to a step's ``ctx``, and tools for testing them.

- ``engine.integrations.ag2``: ``observe(ctx)``, an AG2 / CMBAgent conversation recorded
  as the step's events (needs the ``agents`` extra).
- ``engine.integrations.scripted_llm``: an offline OpenAI-compatible endpoint replaying a
  scripted conversation, for reproducible demos and tests (standard library only).

Nothing in the engine imports these modules; they import the engine.
"""
