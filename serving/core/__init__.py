"""Cross-cutting pieces of the HTTP server: settings, middleware and error handlers."""
