"""Reusable test helpers.

- :mod:`tests.helpers.media_server` — ``MediaServer``: a loopback HTTP server for media files
  (Range requests, throttling, truncation, redirects, status overrides, a request log).
- :mod:`tests.helpers.media_files` — ``encode()``: fixture wav -> m4a/webm/mp3/ogg/... with the
  real ffmpeg binary (cached per session), ``video_without_audio()``, ``looped()``.
- :mod:`tests.helpers.guard` — ``Trap``: a listening socket on a forbidden address (127.0.0.2,
  ::1) that proves no request reached it.
"""
