"""Live transcription over a WebSocket (/v1/realtime), speaking OpenAI's realtime transcription protocol."""
