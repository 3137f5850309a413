"""The demo and benchmark side of Tollgate, not part of the request path: the built-in echo
upstream (`echo`) and `tollgate demo` with its seed data (`run`)."""
