"""A self-hosted Whisper transcription service: batched inference behind LitServe."""
