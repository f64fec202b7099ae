/* clock.h: the clocks nbsnap reads: wall time for records and image configs, monotonic time for deadlines
 * and rates. */
#pragma once

#include <stdint.h>

/* Milliseconds since the epoch (CLOCK_REALTIME, UTC). */
int64_t nb_now_ms(void);
/* Microseconds of CLOCK_MONOTONIC. */
uint64_t nb_now_usec(void);
/* RFC 3339 UTC with seconds ("2026-11-27T01:02:03Z"), for image configs and records. */
void nb_rfc3339(int64_t ms, char ret[static 32]);
