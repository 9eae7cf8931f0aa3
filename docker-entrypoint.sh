#!/bin/sh
# Runs the labeler as the unprivileged `labeler` user. A bind-mounted ./state that Docker
# created is owned by root; hand it over first so `labeler` can initialise it.
set -eu
if [ "$(id -u)" = "0" ]; then
  if [ "$(stat -c %u /app/state)" != "10001" ]; then
    chown -R labeler:labeler /app/state
  fi
  exec setpriv --reuid=labeler --regid=labeler --init-groups "$@"
fi
exec "$@"
