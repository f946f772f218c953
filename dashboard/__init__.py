"""The admin console (Streamlit). It reads and acts only through the admin API, never on a
database: run it with ``python -m dashboard`` (or ``streamlit run dashboard/app.py``)."""
