"""The KPI dashboard at `/dashboard`: server-rendered HTML and inline SVG charts."""
