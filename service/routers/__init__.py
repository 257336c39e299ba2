"""One router per concern; `service.app.create_app` includes them all."""
