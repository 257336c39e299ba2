"""The browser dashboard served at /ui/ (see service.routers.ui).

``static/`` holds the whole front end (one HTML shell, a script, a stylesheet, an
icon): no build step and no CDN, shipped as package data. The pages draw everything
from the JSON API (/recommend, /explain, /similar) plus the read-only helpers in
`service.ui.data`; nothing here ranks or attributes on its own.
"""
