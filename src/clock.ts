// The process's clock for the times its threads share (when an ejection ends,
// how long a near-cache entry stays fresh, when an embedded binding expires)
// and for durations: milliseconds of the system's monotonic clock, read alike
// by every thread, and not moved when the wall clock is stepped (NTP at boot,
// a VM resumed, an operator's `date -s`). On Date.now(), a step back kept
// backends ejected and near-cache entries fresh for as long as the step, and
// a step forward expired every embedded binding at once. The wall clock stays
// where a date is meant: a cookie's Expires, memcached's absolute exptime.
import { performance } from 'node:perf_hooks';

// performance.now() counts from this thread's start on the same clock as
// process.hrtime(); the offset makes every thread's reading the same.
const OFFSET = Number(process.hrtime.bigint()) / 1e6 - performance.now();

export function monotonicMs(): number {
  return performance.now() + OFFSET;
}
