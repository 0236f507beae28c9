#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/test_report_browser.py): Debian's `chromium`, installed
# once when missing (runs as root with --no-sandbox). Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
