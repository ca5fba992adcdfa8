"""The web console: server-rendered pages (Jinja2 templates, vendored htmx and a chart library, no build step).

Each page module declares its pages as `PAGES: tuple[Page, ...]` (console/pages.py); console/registry.py
collects them; each page is a route of the one router (gateway/routes.py page_route), so the app sends an
anonymous browser to the sign-in and a signed-in user whose role the page does not list to the 403 page
before the handler runs. Templates render through console/render.py.
"""
