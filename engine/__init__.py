"""PaintBridge engine: model registry and jobs. Pure compute, no networking.

Importing this package is cheap; torch and diffusers load with the modules
that need them (`engine.models`, `engine.jobs`).
"""

import os

# Nothing in the engine may reach a model hub: every file comes from the
# user's models folder, the package, or the local cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
