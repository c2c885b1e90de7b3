#!/bin/sh
# Fails if the shared library exports a symbol without the tern_ prefix.
set -eu
lib="$1"
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^tern_' | grep -v '^_' || true)
count=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c '^tern_' || true)
if [ -n "$bad" ]; then
    echo "symbols without the tern_ prefix exported from $lib:"
    echo "$bad"
    exit 1
fi
if [ "$count" -eq 0 ]; then
    echo "no tern_ symbols exported from $lib"
    exit 1
fi
echo "exports: $count tern_ symbols, none other"
