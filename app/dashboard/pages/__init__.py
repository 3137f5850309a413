"""The dashboard's pages, a module each (SPEC 9); `app.dashboard.routes` mounts them."""
