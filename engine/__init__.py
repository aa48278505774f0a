"""The serving core shared by the worker and the replay harness (no Kafka, no asyncio)."""
