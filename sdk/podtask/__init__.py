"""podtask: Trigger.dev-style background tasks for Python, run natively on Kubernetes."""

__version__ = "0.1.0"
