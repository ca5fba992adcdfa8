"""The web console: server-rendered pages (Jinja2 templates, vendored htmx and a chart library, no build step).

Each page module declares its pages as `PAGES: tuple[Page, ...]` (console/pages.py); console/registry.py
collects them; the app routes /console/... through the registry after the sign-in gate, and refuses a page
to a signed-in user whose role it does not list (403). Templates render through console/render.py.
"""
