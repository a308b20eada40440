#!/bin/sh
# GNU parallel: one key per input, so a re-run after an interruption
# skips what is done and redoes only what failed or never ran.
set -eu
mkdir -p out
parallel --will-cite idem run -q --key 'resize-{/}' -- cp {} out/{/} ::: images/*
