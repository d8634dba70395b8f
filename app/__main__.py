"""`python -m app`: start the transcription service configured by WHISPER_* variables."""

from app.server import main

main()
