/* test-progress.c: the percent, rate and time left of a save's progress (agent/progress.h). */
#include "agent/progress.h"
#include "tests.h"

#define MB 1000000ull

static NbProgressView view(NbPhase phase, uint64_t done, uint64_t total, uint64_t flow_usec, unsigned floor)
{
        NbProgress p = {.phase = phase, .done = done, .total = total, .flow_usec = flow_usec};
        NbProgressView v;
        nb_progress_view(&p, 0, floor, &v);
        return v;
}

static void test_percent(void)
{
        ASSERT_EQ(view(NB_PHASE_RESOLVING, 0, 0, 0, 0).percent, 1);
        ASSERT_EQ(view(NB_PHASE_BASE_LAYERS, 0, 0, 0, 0).percent, 3);
        /* packing: 5..95 in proportion to the bytes */
        ASSERT_EQ(view(NB_PHASE_PACKING, 0, 3000 * MB, 0, 0).percent, NB_PERCENT_PACKING_FIRST);
        ASSERT_EQ(view(NB_PHASE_PACKING, 750 * MB, 3000 * MB, 0, 0).percent, 5 + 90 / 4);
        ASSERT_EQ(view(NB_PHASE_PACKING, 1500 * MB, 3000 * MB, 0, 0).percent, 50);
        ASSERT_EQ(view(NB_PHASE_PACKING, 2999 * MB, 3000 * MB, 0, 0).percent, 94);
        ASSERT_EQ(view(NB_PHASE_PACKING, 3000 * MB, 3000 * MB, 0, 0).percent, NB_PERCENT_PACKING_LAST);
        /* three 1 GB files: the second one moves the percent (a count of entries would not) */
        ASSERT_EQ(view(NB_PHASE_PACKING, 1000 * MB, 3000 * MB, 0, 0).percent, 35);
        ASSERT_EQ(view(NB_PHASE_PACKING, 2000 * MB, 3000 * MB, 0, 0).percent, 65);
        /* files that grew since the count: capped, never 100 */
        ASSERT_EQ(view(NB_PHASE_PACKING, 9000 * MB, 3000 * MB, 0, 0).percent, NB_PERCENT_PACKING_LAST);
        ASSERT_EQ(view(NB_PHASE_CONFIG, 3000 * MB, 3000 * MB, 0, 0).percent, NB_PERCENT_CONFIG);
        ASSERT_EQ(view(NB_PHASE_MANIFEST, 3000 * MB, 3000 * MB, 0, 0).percent, NB_PERCENT_MANIFEST);
        ASSERT_INT(NB_PERCENT_MANIFEST, <, 100);
        /* huge sizes do not overflow */
        ASSERT_EQ(view(NB_PHASE_PACKING, UINT64_MAX / 2 + 1, UINT64_MAX, 0, 0).percent, 50);
}

static void test_monotonic(void)
{
        /* the floor: never below what was shown */
        ASSERT_EQ(view(NB_PHASE_PACKING, 0, 100, 0, 40).percent, 40);
        ASSERT_EQ(view(NB_PHASE_PACKING, 60, 100, 0, 40).percent, 59);
        unsigned shown = 0;
        for (uint64_t done = 0; done <= 1000; done += 7) {
                unsigned pct = view(NB_PHASE_PACKING, done, 1000, 0, shown).percent;
                ASSERT_INT(pct, >=, shown);
                shown = pct;
        }
}

static void test_no_content(void)
{
        /* nothing to read: entries walked against the baseline's count */
        NbProgress p = {.phase = NB_PHASE_PACKING, .entries = 500};
        NbProgressView v;
        nb_progress_view(&p, 1000, 0, &v);
        ASSERT_EQ(v.percent, 50);
        nb_progress_view(&p, 0, 0, &v); /* no count either */
        ASSERT_EQ(v.percent, NB_PERCENT_PACKING_FIRST);
        ASSERT_EQ(v.eta_sec, -1);
        ASSERT_TRUE(v.rate == 0);
}

static void test_rate_eta(void)
{
        /* not known before bytes flowed NB_RATE_MIN_USEC */
        NbProgressView v = view(NB_PHASE_PACKING, 10 * MB, 100 * MB, NB_RATE_MIN_USEC - 1, 0);
        ASSERT_TRUE(v.rate == 0);
        ASSERT_EQ(v.eta_sec, -1);
        /* 40 MB in 2 s: 20 MB/s, 60 MB left: 3 s */
        v = view(NB_PHASE_PACKING, 40 * MB, 100 * MB, 2000000, 0);
        ASSERT_EQ((long long)v.rate, 20 * MB);
        ASSERT_EQ(v.eta_sec, 3);
        /* rounded up: 1 byte left is 1 s, not 0 */
        v = view(NB_PHASE_PACKING, 100 * MB - 1, 100 * MB, 5000000, 0);
        ASSERT_EQ(v.eta_sec, 1);
        v = view(NB_PHASE_PACKING, 100 * MB, 100 * MB, 5000000, 0);
        ASSERT_EQ(v.eta_sec, 0);
        /* a crawl: a time left past NB_ETA_MAX_SEC is unknown */
        v = view(NB_PHASE_PACKING, 1, 1000000 * MB, 10000000, 0);
        ASSERT_EQ(v.eta_sec, -1);
        ASSERT_TRUE(v.rate > 0);
        /* after packing: the rate stays, no time left */
        v = view(NB_PHASE_CONFIG, 100 * MB, 100 * MB, 5000000, 0);
        ASSERT_EQ((long long)v.rate, 20 * MB);
        ASSERT_EQ(v.eta_sec, -1);
}

static void test_format(void)
{
        char b[32];
        ASSERT_STREQ(nb_progress_rate_format(0, b), "- MB/s");
        ASSERT_STREQ(nb_progress_rate_format(85.34e6, b), "85.3 MB/s");
        ASSERT_STREQ(nb_progress_eta_format(-1, b), "ETA -");
        ASSERT_STREQ(nb_progress_eta_format(0, b), "ETA 0s");
        ASSERT_STREQ(nb_progress_eta_format(59, b), "ETA 59s");
        ASSERT_STREQ(nb_progress_eta_format(185, b), "ETA 3m05s");
        ASSERT_STREQ(nb_progress_eta_format(7620, b), "ETA 2h07m");
        ASSERT_STREQ(nb_progress_eta_format(NB_ETA_MAX_SEC, b), "ETA 2400h00m");
}

int main(void)
{
        test_percent();
        test_monotonic();
        test_no_content();
        test_rate_eta();
        test_format();
        printf("test-progress: ok\n");
        return 0;
}
