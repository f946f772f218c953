"""The console's pages, one module each with a ``render()`` (wired in dashboard/app.py)."""
