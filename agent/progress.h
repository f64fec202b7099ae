/* progress.h: what a save's progress (NbProgress, save.h) means to a person: the percent of the whole save,
 * the rate and the time left, computed in bytes of file content, and the words that show them. Pure
 * arithmetic, in one place for nbsnapd's status (status_message and the image's `progress` object) and for
 * the progress lines of nbsnap save and nbsnap create-image/status --wait.
 *
 * The percent: 1 while the base image is resolved, 3 while its layers are checked, then 5 to 95 while the
 * changes are packed and uploaded, in proportion to the content bytes packed out of those the counting pass
 * found (entries walked out of the baseline's when there are none), 96 for the config, 98 for the manifest;
 * 100 is never shown before the save is ACTIVE. It never goes back: the caller keeps the last one shown and
 * passes it as the floor. The rate: content bytes packed per second since the first one, known once they
 * flowed for NB_RATE_MIN_USEC; the time left: the bytes still to pack at that rate. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "agent/save.h"

#define NB_PERCENT_PACKING_FIRST 5  /* the percent when packing starts */
#define NB_PERCENT_PACKING_LAST  95 /* the most packing shows: the config and the manifest come after */
#define NB_PERCENT_CONFIG        96
#define NB_PERCENT_MANIFEST      98
#define NB_RATE_MIN_USEC         (1000ull * 1000)    /* bytes flowed this long before a rate is shown */
#define NB_ETA_MAX_SEC           (100ll * 24 * 3600) /* a longer time left is shown as unknown */

typedef struct NbProgressView {
        unsigned percent; /* 0..98 */
        double rate;      /* content bytes per second; 0: not known yet */
        int64_t eta_sec;  /* seconds left for the content still to pack; -1: not known */
} NbProgressView;

/* entries_hint: the baseline's entry count (0: unknown), for a save without content bytes. floor: the
 * percent shown last (0 at first). */
void nb_progress_view(const NbProgress *p, uint64_t entries_hint, unsigned floor, NbProgressView *ret);

/* "85.3 MB/s" (MB = 10^6 bytes), or "- MB/s" while the rate is not known. */
const char *nb_progress_rate_format(double rate, char buf[static 32]);
/* "ETA 42s", "ETA 3m05s", "ETA 2h07m", or "ETA -" while not known. */
const char *nb_progress_eta_format(int64_t eta_sec, char buf[static 32]);
