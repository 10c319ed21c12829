"""The Krita plugin's sources; `paintbridge build-plugin` packages `paintbridge/`."""
