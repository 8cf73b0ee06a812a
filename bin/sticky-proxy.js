#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size
// A small young generation makes V8 collect streamed body buffers promptly,
// and --optimize-for-size keeps the old generation from growing ahead of
// need; together they keep resident memory flat (see README, Benchmarks).
import '../src/cli.ts';
