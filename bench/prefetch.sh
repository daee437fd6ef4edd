#!/usr/bin/env bash
# Prefetch drain benchmark: 1,000 messages x 10 images against loopback upstreams that answer
# after 50 ms; prints the drain time and ideal / measured (target >= 0.8). The work is in
# benches/prefetch.rs; this wrapper only runs it. Environment: MESSAGES, LATENCY_MS,
# CONCURRENCY. Everything runs on 127.0.0.1-127.0.0.10 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench --bench prefetch
