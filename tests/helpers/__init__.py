"""Reusable test helpers.

- :mod:`tests.helpers.media_server` — ``MediaServer``: a loopback HTTP server for media files
  (Range requests, throttling, truncation, redirects, status overrides, a request log).
- :mod:`tests.helpers.media_files` — ``encode()``: fixture wav -> m4a/webm/mp3/ogg/... with the
  real ffmpeg binary (cached per session), ``video_without_audio()``, ``looped()``.
"""
