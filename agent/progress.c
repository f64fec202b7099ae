#include <inttypes.h>
#include <stdio.h>

#include "agent/progress.h"

static unsigned packing_percent(const NbProgress *p, uint64_t entries_hint)
{
        uint64_t done = p->done, total = p->total;
        if (total == 0) /* nothing to read: the walk is the work */
                done = p->entries, total = entries_hint;
        if (total == 0)
                return NB_PERCENT_PACKING_FIRST;
        if (done > total)
                done = total;
        /* in 128 bits: bytes times the span cannot overflow */
        unsigned span = NB_PERCENT_PACKING_LAST - NB_PERCENT_PACKING_FIRST;
        return NB_PERCENT_PACKING_FIRST + (unsigned)((unsigned __int128)done * span / total);
}

static unsigned phase_percent(const NbProgress *p, uint64_t entries_hint)
{
        switch (p->phase) {
        case NB_PHASE_RESOLVING:
                return 1;
        case NB_PHASE_BASE_LAYERS:
                return 3;
        case NB_PHASE_PACKING:
                return packing_percent(p, entries_hint);
        case NB_PHASE_CONFIG:
                return NB_PERCENT_CONFIG;
        case NB_PHASE_MANIFEST:
                return NB_PERCENT_MANIFEST;
        default:
                return 0;
        }
}

void nb_progress_view(const NbProgress *p, uint64_t entries_hint, unsigned floor, NbProgressView *ret)
{
        unsigned pct = phase_percent(p, entries_hint);
        *ret = (NbProgressView){.percent = pct > floor ? pct : floor, .eta_sec = -1};
        if (p->flow_usec < NB_RATE_MIN_USEC || p->done == 0)
                return;
        ret->rate = (double)p->done * 1e6 / (double)p->flow_usec;
        if (p->phase != NB_PHASE_PACKING || p->total == 0)
                return;
        uint64_t left = p->done < p->total ? p->total - p->done : 0;
        double eta = (double)left / ret->rate;
        if (eta < (double)NB_ETA_MAX_SEC) { /* rounded up: "0 s left" only when nothing is */
                ret->eta_sec = (int64_t)eta;
                if ((double)ret->eta_sec < eta)
                        ret->eta_sec++;
        }
}

const char *nb_progress_rate_format(double rate, char buf[static 32])
{
        if (rate <= 0)
                snprintf(buf, 32, "- MB/s");
        else
                snprintf(buf, 32, "%.1f MB/s", rate / 1e6);
        return buf;
}

const char *nb_progress_eta_format(int64_t eta, char buf[static 32])
{
        if (eta < 0)
                snprintf(buf, 32, "ETA -");
        else if (eta < 60)
                snprintf(buf, 32, "ETA %" PRId64 "s", eta);
        else if (eta < 3600)
                snprintf(buf, 32, "ETA %" PRId64 "m%02" PRId64 "s", eta / 60, eta % 60);
        else
                snprintf(buf, 32, "ETA %" PRId64 "h%02" PRId64 "m", eta / 3600, eta % 3600 / 60);
        return buf;
}
