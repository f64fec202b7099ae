#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "agent/job.h"
#include "agent/log.h"
#include "agent/store.h"
#include "common/clock.h"
#include "snapshot/snapshot.h"

struct Job {
        const NbConfig *cfg;
        int wake_fd; /* the worker's only way back; kept open if the worker is abandoned at exit */
        pthread_t thread;
        bool joined;
        NbImage img; /* the worker's copy: the loop reads more than its names only after the join */
        NbSaveOptions o;
        /* the configured ones, the request's exclude_paths (in img), then the agent's own secrets inside
         * the root (owned here) */
        char **excludes;
        size_t n_request_excludes, n_secret_excludes;
        _Atomic bool cancel;
        pthread_mutex_t lock; /* guards the fields below */
        pthread_cond_t recorded_cond;
        NbProgress progress;
        bool have_progress, done;
        int result;
        NbError error;
        uint64_t posted_ns;
        /* the last phase the loop tried to record: the worker starts a phase's work only after that */
        NbPhase recorded_phase;
        bool have_recorded;
        /* worker side */
        NbPhase gated_phase;
        bool have_gated;
        /* loop side */
        uint64_t baseline_entries;
        unsigned shown_percent; /* the percent never goes back */
        int64_t started_ms;
};

static void job_post(Job *j)
{
        (void)eventfd_write(j->wake_fd, 1);
}

void job_cancel(Job *j)
{
        atomic_store(&j->cancel, true);
        pthread_mutex_lock(&j->lock);
        pthread_cond_broadcast(&j->recorded_cond); /* a worker waiting for a record goes on, and stops */
        pthread_mutex_unlock(&j->lock);
}

/* Worker side: a new phase starts only once the loop has tried to write its record. A record that cannot be
 * be written cancels the save (job_record_failed()), so a save whose end could not be recorded stops before
 * it pushes its tag. Bounded: a loop that does not answer within NB_RECORD_WAIT_S lets the save go on. */
static void job_wait_recorded(Job *j, NbPhase phase)
{
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += NB_RECORD_WAIT_S;
        pthread_mutex_lock(&j->lock);
        while (!(j->have_recorded && j->recorded_phase == phase) && !atomic_load(&j->cancel))
                if (pthread_cond_timedwait(&j->recorded_cond, &j->lock, &deadline) == ETIMEDOUT)
                        break;
        pthread_mutex_unlock(&j->lock);
}

static void on_save_progress(void *userdata, const NbProgress *p)
{
        Job *j = userdata;
        uint64_t now = nb_now_usec() * 1000ull;
        pthread_mutex_lock(&j->lock);
        bool post = !j->have_progress || p->phase != j->progress.phase ||
                    now - j->posted_ns >= NB_PROGRESS_POST_NS;
        j->progress = *p;
        j->have_progress = true;
        if (post)
                j->posted_ns = now;
        pthread_mutex_unlock(&j->lock);
        if (post)
                job_post(j);
        if (!j->have_gated || p->phase != j->gated_phase) {
                j->have_gated = true;
                j->gated_phase = p->phase;
                job_wait_recorded(j, p->phase);
        }
}

static void on_save_note(void *userdata, const char *message)
{
        Job *j = userdata;
        log_image(LOG_INFO, j->img.id, NULL, "%s", message);
}

static void on_save_warning(void *userdata, const char *message)
{
        Job *j = userdata;
        log_image(LOG_WARNING, j->img.id, NULL, "%s", message);
}

static void *job_thread(void *userdata)
{
        Job *j = userdata;
        NbError e = {0};
        /* The save (and the compressor threads it starts, which inherit this) runs below the event loop, so
         * the API, the watchdog and sd_notify stay on time while every core packs the layer. */
        if (setpriority(PRIO_PROCESS, (id_t)gettid(), NB_SAVE_NICE) < 0)
                log_warning_errno(-errno, "Cannot lower the priority of the save thread, ignoring: %m");
        int r = nb_save(&j->o, &j->img, &e);
        pthread_mutex_lock(&j->lock);
        j->done = true;
        j->result = r;
        j->error = e;
        pthread_mutex_unlock(&j->lock);
        job_post(j);
        return NULL;
}

static void job_release(Job *j)
{
        nb_image_done(&j->img);
        for (size_t i = 0; i < j->n_secret_excludes; i++)
                free(j->excludes[j->cfg->n_exclude + j->n_request_excludes + i]);
        free(j->excludes);
        pthread_cond_destroy(&j->recorded_cond);
        pthread_mutex_destroy(&j->lock);
        free(j);
}

Job *job_free(Job *j)
{
        if (!j)
                return NULL;
        if (!j->joined)
                pthread_join(j->thread, NULL);
        job_release(j);
        return NULL;
}

void job_poll(Job *j, JobState *ret)
{
        pthread_mutex_lock(&j->lock);
        *ret = (JobState){.progress = j->progress, .have_progress = j->have_progress, .done = j->done};
        pthread_mutex_unlock(&j->lock);
}

void job_recorded(Job *j, NbPhase phase)
{
        pthread_mutex_lock(&j->lock);
        j->have_recorded = true;
        j->recorded_phase = phase;
        pthread_cond_broadcast(&j->recorded_cond);
        pthread_mutex_unlock(&j->lock);
}

const NbImage *job_image(const Job *j)
{
        return &j->img;
}

int64_t job_started_ms(const Job *j)
{
        return j->started_ms;
}

int job_join(Job *j, NbImage *ret_img, NbError *ret_e)
{
        pthread_join(j->thread, NULL);
        j->joined = true;
        *ret_img = j->img; /* moved */
        j->img = (NbImage){0};
        *ret_e = j->error;
        return j->result;
}

void job_progress_view(Job *j, const NbProgress *p, NbProgressView *ret)
{
        nb_progress_view(p, j->baseline_entries, j->shown_percent, ret);
        j->shown_percent = ret->percent;
}

void job_progress_message(const Job *j, const NbProgress *p, const NbProgressView *v, char *buf, size_t size)
{
        const char *phase = nb_phase_to_string(p->phase);
        if (p->phase < NB_PHASE_PACKING) {
                snprintf(buf, size, "%s: %u%%", phase, v->percent);
                return;
        }
        char rate[32], eta[32], entries[64];
        if (j->baseline_entries > 0)
                snprintf(entries, sizeof(entries), "%" PRIu64 "/~%" PRIu64 " entries", p->entries,
                         j->baseline_entries);
        else
                snprintf(entries, sizeof(entries), "%" PRIu64 " entries", p->entries);
        snprintf(buf, size, "%s: %u%% (%.1f of %.1f MB packed, %s, %s; %s walked, %.1f MB sent)", phase,
                 v->percent, (double)(p->done < p->total ? p->done : p->total) / 1e6, (double)p->total / 1e6,
                 nb_progress_rate_format(v->rate, rate), nb_progress_eta_format(v->eta_sec, eta), entries,
                 (double)p->sent / 1e6);
}

static uint64_t baseline_count(const char *state_dir)
{
        _cleanup_free_ char *path = NULL;
        SnapBaseline *b = NULL;
        NbError se = {0};
        if (nb_baseline_path(state_dir, &path) < 0 || snap_baseline_open(path, &b, &se) < 0)
                return 0;
        uint64_t n = snap_baseline_count(b);
        snap_baseline_free(b);
        return n;
}

char *job_container_path(const char *root, const char *host_path)
{
        char r[PATH_MAX], h[PATH_MAX];
        if (!host_path || !realpath(root, r) || !realpath(host_path, h))
                return NULL;
        if (strcmp(r, "/") == 0)
                return strdup(h);
        size_t n = strlen(r);
        return strncmp(h, r, n) == 0 && h[n] == '/' ? strdup(h + n) : NULL;
}

/* The save excludes the state dir and the registry credentials itself; to the configured excludes it adds
 * the request's exclude_paths (this save only), and the agent's own secrets (the bearer token, the TLS key)
 * when they live inside the saved tree, whatever exclude= says. */
static int job_excludes(Job *j, const NbConfig *c)
{
        const char *secrets[] = {c->token_file, c->tls_key};
        size_t n_request = 0;
        while (j->img.exclude_paths && j->img.exclude_paths[n_request])
                n_request++;
        j->excludes = calloc(c->n_exclude + n_request + ELEMENTSOF(secrets) + 1, sizeof(char *));
        if (!j->excludes)
                return -ENOMEM;
        size_t n = 0;
        for (size_t i = 0; i < c->n_exclude; i++)
                j->excludes[n++] = c->exclude[i];
        for (size_t i = 0; i < n_request; i++)
                j->excludes[n++] = j->img.exclude_paths[i];
        j->n_request_excludes = n_request;
        for (size_t i = 0; i < ELEMENTSOF(secrets); i++) {
                char *p = job_container_path(j->o.root, secrets[i]);
                if (p) {
                        j->excludes[n++] = p;
                        j->n_secret_excludes++;
                }
        }
        j->o.excludes = (const char *const *)j->excludes;
        j->o.n_excludes = n;
        return 0;
}

/* The save as the configuration asks for it; the request fields point into the job's image. */
static void save_options(Job *j, const NbConfig *c)
{
        j->o = (NbSaveOptions){
                .root = c->root ? c->root : "/",
                .state_dir = c->state_dir ? c->state_dir : NB_DEFAULT_STATE_DIR,
                .registry_url = c->registry,
                .base_image = c->base_image,
                .namespace = j->img.namespace,
                .name = j->img.name,
                .tag = j->img.tag,
                .description = j->img.description,
                .workspace_id = j->img.workspace_id,
                .authfile = c->authfile,
                .ca_file = c->ca_file,
                .excludes = (const char *const *)c->exclude,
                .n_excludes = c->n_exclude,
                .threads = c->threads,
                .level = c->level_set ? (int)c->level : -1,
                .compression = c->compression,
                .chunk_size = c->chunk_size,
                .max_image_size = c->max_image_size,
                .max_layer_size = c->max_layer_size,
                .incremental = c->incremental,
                .max_layers = c->max_layers,
                .chain_waste_max = (int)c->chain_waste_max,
                .overwrite = c->allow_overwrite,
                .overwrite_how = "set allow_overwrite = true in nbsnapd's config",
                .cancel = &j->cancel,
                .progress = on_save_progress,
                .note = on_save_note,
                .warning = on_save_warning,
                .userdata = j,
                .program = "nbsnapd",
        };
}

int job_start(const NbConfig *c, const NbImage *img, int wake_fd, Job **ret, NbError *e)
{
        Job *j = calloc(1, sizeof(*j));
        if (!j)
                return nb_error_oom(e);
        pthread_mutex_init(&j->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&j->recorded_cond, &ca);
        pthread_condattr_destroy(&ca);
        j->cfg = c;
        j->wake_fd = wake_fd;
        j->started_ms = nb_now_ms();
        if (nb_image_copy(img, &j->img) < 0) {
                job_release(j);
                return nb_error_oom(e);
        }
        save_options(j, c);
        if (job_excludes(j, c) < 0) {
                job_release(j);
                return nb_error_oom(e);
        }
        /* read once here: a few ms for a typical baseline, and it makes the percent meaningful */
        j->baseline_entries = baseline_count(j->o.state_dir);
        int r = pthread_create(&j->thread, NULL, job_thread, j);
        if (r != 0) {
                job_release(j);
                return nb_error_set(e, -r, "cannot start the save worker: %s", strerror(r));
        }
        *ret = j;
        return 0;
}
