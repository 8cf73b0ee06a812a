#!/usr/bin/env -S node --max-semi-space-size=1
// A small young generation makes V8 collect streamed body buffers promptly,
// which keeps resident memory flat under large transfers (see README).
import '../src/cli.ts';
