"""JetBridge's three Knative functions; each ``main.py`` deploys on its own."""
