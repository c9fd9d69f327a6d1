#!/usr/bin/env bash
# The headless browser of the view's browser tests (tests/integration/test_view_browser.py): Debian's
# chromium and chromium-driver, installed with apt-get when missing and when running as root.
# Never fails: without a browser those tests skip and say why.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[browser] chromium/chromedriver missing and cannot apt-get here: browser tests will skip" >&2
  exit 0
fi
echo "[browser] installing Debian's chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/tmp/spt-browser-apt.log 2>&1; then
  echo "[browser] apt-get failed (see /tmp/spt-browser-apt.log): browser tests will skip" >&2
fi
exit 0
