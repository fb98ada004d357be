"""The PostgreSQL archive: every document the cycles published and every cycle summary, kept for
good (Redis keeps the live state and capped streams; this is the long memory).

schema.py    the numbered migrations and the columns the runner writes (``LATEST``)
rows.py      stream entries and summaries -> typed rows; cursors; the scorecard's totals (pure)
postgres.py  every byte sent to PostgreSQL (psycopg 3's asyncio API, imported only here)
step.py      the cycle's archive step, after the record step: copy what is not archived yet
"""
