#!/bin/sh
# Health check for one ComfyUI worker with Sonic Guard, for Docker HEALTHCHECK, systemd, Nomad or
# Kubernetes exec probes.  Exit 0 when /sonic/health answers 200 (ok), 1 otherwise (503 degraded,
# no answer, or timeout); the reason is printed.
#
#   sonic-health-check.sh [base-url]      default: http://127.0.0.1:8188
#
# (A Kubernetes httpGet probe can point at /sonic/health directly: it treats 200 as healthy and 503
# as unhealthy without this script.)

url="${1:-http://127.0.0.1:8188}/sonic/health"
body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT
code="$(curl --silent --max-time "${SONIC_HEALTH_TIMEOUT_S:-5}" --output "$body_file" \
    --write-out '%{http_code}' "$url")" || code="000"
case "$code" in
    200)
        echo "ok"
        exit 0 ;;
    503)
        echo "degraded: $(cat "$body_file")"
        exit 1 ;;
    000)
        echo "no answer from $url"
        exit 1 ;;
    *)
        echo "unexpected HTTP $code from $url"
        exit 1 ;;
esac
