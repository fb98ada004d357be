"""``runner serve``'s face: a Starlette app with the dashboard, the HTTP API and its event feed.

app.py        the application: routes, errors in one shape, the dashboard's static files
routes.py     the JSON API and the health routes
requests.py   query parameters, JSON bodies and the bearer token, checked
events.py     ``GET /api/events``: one client's Server-Sent Events (catch-up or snapshot, then live)
hub.py        the one reader per process and its fan-out to bounded per-client queues
feed.py       the feed's vocabulary (pure): streams served as events, the cursor, SSE frames
static/       the dashboard: one page, plain JavaScript, no build step, nothing from elsewhere
"""
