#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "common/uuid.h"
#include "common/clock.h"
#include "snapshot/snapshot.h"
#include "agent/manager.h"
#include "agent/log.h"
#include "registry/registry.h"
#include "agent/reporter.h"
#include "agent/request.h"
#include "agent/save.h"
#include "agent/store.h"

#define NB_SAVE_NICE        5 /* the save threads' nice value, relative to the loop's 0 */
#define NB_PROGRESS_POST_NS (200ull * 1000 * 1000) /* worker -> loop progress posts, at most this often */
#define NB_DELETES_MAX      4                      /* registry deletions running at once */
#define NB_RECORD_WAIT_S    30 /* a save waits at most this long for its phase's record to be written */
#define NB_LIST_MAX         NB_STORE_IMAGES_MAX

static const double duration_buckets[] = {5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600};

typedef struct Job {
        Manager *m;
        int wake_fd; /* the worker's only way back; kept open if the worker is abandoned at exit */
        pthread_t thread;
        NbImage img; /* the worker's copy: the loop reads it only after the join */
        NbSaveOptions o;
        char **excludes; /* the configured ones, then the agent's own secrets inside the root */
        size_t n_secret_excludes;
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
        NbPhase shown_phase;
        bool creating_recorded;
        int64_t started_ms;
        NbError store_error; /* the record of the save could not be written: the save was stopped */
        bool store_failed;
} Job;

typedef struct DeleteTask {
        Manager *m;
        pthread_t thread;
        char id[37];
        char *repository, *digest;
        NbReplyDone done;
        void *userdata;
        /* worker result, read after the join */
        int result;
        NbError error;
        _Atomic bool finished;
        bool joined;
} DeleteTask;

struct Manager {
        const NbConfig *cfg;
        sd_event *event;
        NbStore *store;
        NbReporter *reporter;
        NbImage **images;
        size_t n_images;
        Job *job;
        bool job_abandoned;
        DeleteTask *deletes[NB_DELETES_MAX];
        int wake_fd;
        sd_event_source *wake_source, *stop_timer;
        bool ready, stopping;
        char registry_host[256];
        /* metrics */
        uint64_t saves[_NB_STATUS_MAX];
        uint64_t bytes_pushed;
        uint64_t duration_counts[ELEMENTSOF(duration_buckets) + 1];
        double duration_sum;
        uint64_t duration_count;
};

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- replies --------------------------------------------------------------------------------------------
 */

void nb_reply_done(NbReply *r)
{
        free(r->body);
        *r = (NbReply){0};
}

static void reply_json(NbReply *r, unsigned status, cJSON *j)
{
        char *s = j ? cJSON_Print(j) : NULL;
        cJSON_Delete(j);
        if (!s) {
                nb_reply_error(r, 500, NB_ERROR_INTERNAL, "out of memory");
                return;
        }
        nb_reply_done(r);
        r->status = status;
        r->body = s;
        r->content_type = "application/json";
}

void nb_reply_error(NbReply *r, unsigned status, const char *code, const char *fmt, ...)
{
        char msg[2048];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "error_code", code);
        cJSON_AddStringToObject(j, "error_msg", msg);
        char *s = cJSON_Print(j);
        cJSON_Delete(j);
        nb_reply_done(r);
        r->status = s ? status : 500;
        r->body = s;
        r->content_type = "application/json";
}

/* ---- images ---------------------------------------------------------------------------------------------
 */

static NbImage *image_find(Manager *m, const char *id)
{
        for (size_t i = 0; i < m->n_images; i++)
                if (strcmp(m->images[i]->id, id) == 0)
                        return m->images[i];
        return NULL;
}

static bool image_busy(Manager *m, const NbImage *img)
{
        if (m->job && strcmp(m->job->img.id, img->id) == 0)
                return true;
        for (size_t i = 0; i < NB_DELETES_MAX; i++)
                if (m->deletes[i] && strcmp(m->deletes[i]->id, img->id) == 0)
                        return true;
        return false;
}

/* Keeps at most NB_STORE_IMAGES_MAX records: the oldest finished ones go. */
static void images_prune(Manager *m)
{
        while (m->n_images >= NB_STORE_IMAGES_MAX) {
                size_t oldest = SIZE_MAX;
                for (size_t i = 0; i < m->n_images; i++)
                        if (!image_busy(m, m->images[i]) &&
                            (oldest == SIZE_MAX || m->images[i]->create_at < m->images[oldest]->create_at))
                                oldest = i;
                if (oldest == SIZE_MAX)
                        return;
                (void)nb_store_remove_image(m->store, m->images[oldest]->id);
                nb_image_free(m->images[oldest]);
                m->images[oldest] = m->images[--m->n_images];
        }
}

/* Every state change: the record first (durable), then the outbox (durable), then the reporter. Each
 * failure is logged here; the first one is also returned in *ret_e (may be NULL). */
static int image_record_e(Manager *m, const NbImage *img, bool report, NbError *ret_e)
{
        NbError e = {0}, q_e = {0};
        int r = nb_store_put_image(m->store, img, &e);
        if (r < 0)
                log_image(LOG_ERR, img->id, NULL, "%s", e.msg);
        int q = 0;
        if (report && m->cfg->report_url) {
                _cleanup_free_ char *json = nb_image_to_string(img, false);
                q = json ? nb_outbox_push(m->store, json, NULL, &q_e) : nb_error_oom(&q_e);
                if (q < 0)
                        log_image(LOG_ERR, img->id, NULL, "cannot queue the report of status %s: %s",
                                  nb_status_to_string(img->status), q_e.msg);
                else
                        nb_reporter_kick(m->reporter);
        }
        if (ret_e && (r < 0 || q < 0))
                *ret_e = r < 0 ? e : q_e;
        return r < 0 ? r : q;
}

static int image_record(Manager *m, const NbImage *img, bool report)
{
        return image_record_e(m, img, report, NULL);
}

/* ---- sd_notify STATUS -----------------------------------------------------------------------------------
 */

static void notify_status(Manager *m)
{
        char status[1200];
        if (m->job) {
                const NbImage *img = image_find(m, m->job->img.id);
                snprintf(status, sizeof(status), "STATUS=saving %s/%s:%s (image %s): %s",
                         m->job->img.namespace, m->job->img.name, m->job->img.tag, m->job->img.id,
                         img && img->status_message ? img->status_message : "starting");
        } else {
                size_t active = 0;
                for (size_t i = 0; i < m->n_images; i++)
                        active += m->images[i]->status == NB_STATUS_ACTIVE;
                snprintf(status, sizeof(status), "STATUS=%s; %zu image(s), %zu active",
                         m->stopping ? "stopping" : "idle", m->n_images, active);
        }
        for (char *p = status; *p; p++)
                if (*p == '\n')
                        *p = ' ';
        (void)sd_notify(false, status);
}

/* ---- the save -------------------------------------------------------------------------------------------
 */

static void job_post(Job *j)
{
        (void)eventfd_write(j->wake_fd, 1);
}

static void job_cancel(Job *j)
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
        uint64_t now = now_ns();
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

static void job_free(Job *j)
{
        if (!j)
                return;
        nb_image_done(&j->img);
        for (size_t i = 0; i < j->n_secret_excludes; i++)
                free(j->excludes[j->m->cfg->n_exclude + i]);
        free(j->excludes);
        pthread_cond_destroy(&j->recorded_cond);
        pthread_mutex_destroy(&j->lock);
        free(j);
}

/* Overall percent: packing is the long part, measured by entries walked against the baseline's count. */
static unsigned progress_percent(const Job *j, const NbProgress *p)
{
        switch (p->phase) {
        case NB_PHASE_RESOLVING:
                return 1;
        case NB_PHASE_BASE_LAYERS:
                return 3;
        case NB_PHASE_PACKING:
                if (p->expected > 0)
                        return 5 +
                               (unsigned)(90.0 * (double)(p->sent < p->expected ? p->sent : p->expected) /
                                          (double)p->expected);
                if (j->baseline_entries > 0)
                        return 5 +
                               (unsigned)(90.0 *
                                          (double)(p->entries < j->baseline_entries ? p->entries
                                                                                    : j->baseline_entries) /
                                          (double)j->baseline_entries);
                return 5;
        case NB_PHASE_CONFIG:
                return 96;
        case NB_PHASE_MANIFEST:
                return 98;
        default:
                return 0;
        }
}

static void progress_message(const Job *j, const NbProgress *p, char *buf, size_t size)
{
        unsigned pct = progress_percent(j, p);
        const char *phase = nb_phase_to_string(p->phase);
        if (p->phase < NB_PHASE_PACKING) {
                snprintf(buf, size, "%s: %u%%", phase, pct);
                return;
        }
        char total[64] = "";
        if (p->expected > 0)
                snprintf(total, sizeof(total), " of ~%.1f MB", (double)p->expected / 1e6);
        char entries[64];
        if (j->baseline_entries > 0)
                snprintf(entries, sizeof(entries), "%" PRIu64 "/~%" PRIu64 " entries", p->entries,
                         j->baseline_entries);
        else
                snprintf(entries, sizeof(entries), "%" PRIu64 " entries", p->entries);
        snprintf(buf, size, "%s: %u%% (%s walked, %.1f MB read, %.1f MB%s sent)", phase, pct, entries,
                 (double)p->read / 1e6, (double)p->sent / 1e6, total);
}

static void metrics_count_save(Manager *m, NbStatus status, const Job *j)
{
        m->saves[status < _NB_STATUS_MAX ? status : NB_STATUS_ERROR]++;
        m->bytes_pushed += j->progress.sent;
        double secs = (double)(nb_now_ms() - j->started_ms) / 1000.0;
        size_t b = 0;
        while (b < ELEMENTSOF(duration_buckets) && secs > duration_buckets[b])
                b++;
        m->duration_counts[b]++;
        m->duration_sum += secs;
        m->duration_count++;
}

static void job_finish(Manager *m, Job *j)
{
        pthread_join(j->thread, NULL);
        NbImage *img = image_find(m, j->img.id);
        if (!img) { /* cannot happen: records of running saves are never pruned */
                job_free(j);
                m->job = NULL;
                return;
        }
        nb_image_done(img);
        *img = j->img; /* moved */
        j->img = (NbImage){0};
        memcpy(j->img.id, img->id, sizeof(img->id));
        if (img->status != NB_STATUS_ACTIVE && img->status != NB_STATUS_CREATE_FAILED)
                nb_image_set_status(img, NB_STATUS_CREATE_FAILED, "%s", j->error.msg);
        if (j->store_failed && img->status != NB_STATUS_ACTIVE)
                nb_image_set_status(img, NB_STATUS_CREATE_FAILED,
                                    "the save was stopped because the state dir %s cannot be written: %s; "
                                    "make room there or make it writable, then save again",
                                    m->cfg->state_dir ? m->cfg->state_dir : NB_DEFAULT_STATE_DIR,
                                    j->store_error.msg);
        metrics_count_save(m, img->status, j);
        if (img->status == NB_STATUS_ACTIVE)
                log_image(LOG_NOTICE, img->id, "done", "saved as %s (%s), %" PRId64 " KB", img->swr_path,
                          img->manifest_digest, img->size_kb);
        else
                log_image(LOG_ERR, img->id, "failed", "save failed: %s", img->status_message);
        image_record(m, img, true);
        job_free(j);
        m->job = NULL;
        notify_status(m);
        if (m->stopping)
                sd_event_exit(m->event, 0);
}

/* A record of a running save could not be written (state dir read-only, or full beyond the reserve): the
 * save is stopped, once. Going on would push an image whose end could not be recorded; the record on disk
 * stays at the last phase written, and the next start marks it CREATE_FAILED. */
static void job_record_failed(Manager *m, Job *j, const NbError *e)
{
        j->store_failed = true;
        j->store_error = *e;
        log_image(LOG_ERR, j->img.id, NULL, "stopping the save, its end could not be recorded: %s", e->msg);
        job_cancel(j);
}

static void job_sync(Manager *m)
{
        Job *j = m->job;
        pthread_mutex_lock(&j->lock);
        NbProgress p = j->progress;
        bool have = j->have_progress, done = j->done;
        pthread_mutex_unlock(&j->lock);
        NbImage *img = image_find(m, j->img.id);
        if (have && img) {
                char msg[NB_STATUS_MESSAGE_MAX];
                NbError e = {0};
                int r = 0;
                progress_message(j, &p, msg, sizeof(msg));
                if (!j->creating_recorded) {
                        j->creating_recorded = true;
                        j->shown_phase = p.phase;
                        nb_image_set_status(img, NB_STATUS_CREATING, "%s", msg);
                        log_image(LOG_INFO, img->id, nb_phase_to_string(p.phase), "saving: %s", msg);
                        r = image_record_e(m, img, true, &e);
                } else {
                        nb_image_set_status(img, NB_STATUS_CREATING, "%s", msg);
                        if (p.phase != j->shown_phase) {
                                j->shown_phase = p.phase;
                                log_image(LOG_INFO, img->id, nb_phase_to_string(p.phase), "%s", msg);
                                r = image_record_e(m, img, false, &e);
                        }
                }
                if (r < 0 && !j->store_failed)
                        job_record_failed(m, j, &e);
                pthread_mutex_lock(&j->lock);
                j->have_recorded = true;
                j->recorded_phase = p.phase;
                pthread_cond_broadcast(&j->recorded_cond);
                pthread_mutex_unlock(&j->lock);
        }
        if (done)
                job_finish(m, j);
        else
                notify_status(m);
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

/* HOST_PATH as a path inside the container whose root is ROOT, or NULL when it is outside (or missing). */
static char *container_path(const char *root, const char *host_path)
{
        char r[PATH_MAX], h[PATH_MAX];
        if (!host_path || !realpath(root, r) || !realpath(host_path, h))
                return NULL;
        if (strcmp(r, "/") == 0)
                return strdup(h);
        size_t n = strlen(r);
        return strncmp(h, r, n) == 0 && h[n] == '/' ? strdup(h + n) : NULL;
}

/* The save excludes the state dir and the registry credentials itself; the agent adds its own secrets (the
 * bearer token, the TLS key) when they live inside the saved tree, whatever exclude= says. */
static int job_excludes(Job *j, const NbConfig *c)
{
        const char *secrets[] = {c->token_file, c->tls_key};
        j->excludes = calloc(c->n_exclude + ELEMENTSOF(secrets) + 1, sizeof(char *));
        if (!j->excludes)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_exclude; i++)
                j->excludes[i] = c->exclude[i];
        for (size_t i = 0; i < ELEMENTSOF(secrets); i++) {
                char *p = container_path(j->o.root, secrets[i]);
                if (p)
                        j->excludes[c->n_exclude + j->n_secret_excludes++] = p;
        }
        j->o.excludes = (const char *const *)j->excludes;
        j->o.n_excludes = c->n_exclude + j->n_secret_excludes;
        return 0;
}

static int job_start(Manager *m, const NbImage *img, NbError *e)
{
        const NbConfig *c = m->cfg;
        Job *j = calloc(1, sizeof(*j));
        if (!j)
                return nb_error_oom(e);
        pthread_mutex_init(&j->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&j->recorded_cond, &ca);
        pthread_condattr_destroy(&ca);
        j->m = m;
        j->wake_fd = m->wake_fd;
        j->started_ms = nb_now_ms();
        if (nb_image_copy(img, &j->img) < 0) {
                job_free(j);
                return nb_error_oom(e);
        }
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
                .cancel = &j->cancel,
                .progress = on_save_progress,
                .note = on_save_note,
                .userdata = j,
        };
        if (job_excludes(j, c) < 0) {
                job_free(j);
                return nb_error_oom(e);
        }
        /* read once here: a few ms for a typical baseline, and it makes the percent meaningful */
        j->baseline_entries = baseline_count(j->o.state_dir);
        int r = pthread_create(&j->thread, NULL, job_thread, j);
        if (r != 0) {
                job_free(j);
                return nb_error_set(e, -r, "cannot start the save worker: %s", strerror(r));
        }
        m->job = j;
        return 0;
}

/* ---- the API --------------------------------------------------------------------------------------------
 */

const char *manager_project_id(const Manager *m)
{
        return m->cfg->project_id;
}

const char *manager_notebook_id(const Manager *m)
{
        return m->cfg->notebook_id;
}

static const char *machine_arch(void)
{
        struct utsname u;
        if (uname(&u) == 0 && (strcmp(u.machine, "aarch64") == 0 || strcmp(u.machine, "arm64") == 0))
                return "AARCH64";
        return "X86_64";
}

static int strv_make(char ***ret, const char *a, const char *b)
{
        char **v = calloc(3, sizeof(char *));
        if (!v || !(v[0] = strdup(a)) || (b && !(v[1] = strdup(b)))) {
                if (v)
                        free(v[0]);
                free(v);
                return -ENOMEM;
        }
        *ret = v;
        return 0;
}

static int image_new(Manager *m, const NbCreateRequest *rq, int64_t now, NbImage **ret)
{
        NbImage *img = calloc(1, sizeof(*img));
        _cleanup_free_ char *swr = NULL, *repo = NULL;
        bool gpu = access("/dev/nvidiactl", F_OK) == 0;
        if (!img || nb_uuid(img->id) < 0 ||
            asprintf(&swr, "%s/%s/%s:%s", m->registry_host, rq->namespace, rq->name, rq->tag) < 0 ||
            asprintf(&repo, "%s/%s", rq->namespace, rq->name) < 0 ||
            nb_image_set(&img->name, rq->name) < 0 || nb_image_set(&img->namespace, rq->namespace) < 0 ||
            nb_image_set(&img->tag, rq->tag) < 0 || nb_image_set(&img->description, rq->description) < 0 ||
            nb_image_set(&img->workspace_id, rq->workspace_id) < 0 ||
            nb_image_set(&img->swr_path, swr) < 0 || nb_image_set(&img->repository, repo) < 0 ||
            nb_image_set(&img->arch, machine_arch()) < 0 ||
            nb_image_set(&img->service_type, "UNKNOWN") < 0 ||
            strv_make(&img->dev_services, "NOTEBOOK", "SSH") < 0 ||
            strv_make(&img->resource_categories, "CPU", gpu ? "GPU" : NULL) < 0) {
                nb_image_free(img);
                return -ENOMEM;
        }
        img->create_at = img->update_at = now;
        img->status = NB_STATUS_INIT;
        *ret = img;
        return 0;
}

/* The first record of a save and its first report, both or neither: a state dir that cannot take them
 * leaves nothing behind. */
static int record_new(Manager *m, const NbImage *img, NbError *e)
{
        int r = nb_store_put_image(m->store, img, e);
        if (r >= 0 && m->cfg->report_url) {
                _cleanup_free_ char *json = nb_image_to_string(img, false);
                r = json ? nb_outbox_push(m->store, json, NULL, e) : nb_error_oom(e);
                if (r >= 0)
                        nb_reporter_kick(m->reporter);
        }
        if (r < 0)
                (void)nb_store_remove_image(m->store, img->id);
        return r;
}

static void reply_store_error(NbReply *ret, int r, const NbError *e)
{
        if (r == -ENOSPC || r == -EDQUOT)
                nb_reply_error(ret, 507, NB_ERROR_STORAGE, "%s", e->msg);
        else
                nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "%s", e->msg);
}

/* An image of this agent (any status: a failed save may have left the tag behind) has this tag. */
static bool image_tag_taken(void *userdata, const char *namespace, const char *name, const char *tag)
{
        const Manager *m = userdata;
        for (size_t i = 0; i < m->n_images; i++) {
                const NbImage *img = m->images[i];
                if (strcmp(img->namespace, namespace) == 0 && strcmp(img->name, name) == 0 &&
                    strcmp(img->tag, tag) == 0)
                        return true;
        }
        return false;
}

void manager_create_image(Manager *m, const char *body, size_t size, bool too_large, NbReply *ret)
{
        NbError e = {0};
        _cleanup_(nb_create_request_done) NbCreateRequest rq = {0};
        int64_t now = nb_now_ms();
        if (too_large) {
                nb_reply_error(ret, 413, NB_ERROR_TOO_LARGE, "the request body is over %u bytes",
                               NB_REQUEST_BODY_MAX);
                return;
        }
        int r = nb_create_request_parse(body, size, &rq, &e);
        if (r >= 0)
                r = nb_create_request_defaults(&rq, m->cfg->namespace, m->cfg->base_image, now, &e);
        if (r >= 0)
                r = nb_create_request_unique_tag(&rq, image_tag_taken, m, &e);
        if (r < 0) {
                if (r == -E2BIG)
                        nb_reply_error(ret, 413, NB_ERROR_TOO_LARGE, "%s", e.msg);
                else if (r == -ENOMEM)
                        nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "%s", e.msg);
                else
                        nb_reply_error(ret, 400, NB_ERROR_BAD_REQUEST, "%s", e.msg);
                return;
        }
        if (m->stopping) {
                nb_reply_error(ret, 503, NB_ERROR_UNAVAILABLE, "the agent is stopping; save again later");
                return;
        }
        if (m->job) {
                nb_reply_error(
                        ret, 409, NB_ERROR_CONFLICT,
                        "a save is already running for this instance (image %s, %s/%s:%s); one save at "
                        "a time",
                        m->job->img.id, m->job->img.namespace, m->job->img.name, m->job->img.tag);
                return;
        }
        r = nb_store_room(m->store, &e);
        if (r < 0) {
                log_error("refusing a save: %s", e.msg);
                reply_store_error(ret, r, &e);
                return;
        }
        images_prune(m);
        NbImage *img = NULL;
        NbImage **nv = realloc(m->images, (m->n_images + 1) * sizeof(*nv));
        if (nv)
                m->images = nv;
        if (!nv || image_new(m, &rq, now, &img) < 0) {
                nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "out of memory");
                return;
        }
        m->images[m->n_images++] = img;
        r = record_new(m, img, &e);
        if (r < 0) {
                log_image(LOG_ERR, img->id, NULL, "refusing the save: %s", e.msg);
                NbError w = e;
                nb_error_set(&w, r, "cannot record the image in the state dir: %s", e.msg);
                reply_store_error(ret, r, &w);
                nb_image_free(img);
                m->n_images--;
                return;
        }
        log_image(LOG_NOTICE, img->id, "init", "save requested: %s (%s)", img->swr_path,
                  img->description[0] ? img->description : "no description");
        r = job_start(m, img, &e);
        if (r < 0) {
                nb_image_set_status(img, NB_STATUS_ERROR, "%s", e.msg);
                log_image(LOG_ERR, img->id, "failed", "%s", e.msg);
                m->saves[NB_STATUS_ERROR]++;
                image_record(m, img, true);
                nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "%s", e.msg);
                return;
        }
        notify_status(m);
        reply_json(ret, 200, nb_image_to_json(img));
}

void manager_get_image(Manager *m, const char *id, NbReply *ret)
{
        const NbImage *img = image_find(m, id);
        if (!img)
                nb_reply_error(ret, 404, NB_ERROR_NOT_FOUND, "image %.64s not found", id);
        else
                reply_json(ret, 200, nb_image_to_json(img));
}

static int cmp_newest(const void *a, const void *b)
{
        const NbImage *x = *(NbImage *const *)a, *y = *(NbImage *const *)b;
        if (x->create_at != y->create_at)
                return x->create_at > y->create_at ? -1 : 1;
        return strcmp(x->id, y->id);
}

void manager_list_images(Manager *m, const char *status, NbReply *ret)
{
        NbStatus want = _NB_STATUS_MAX;
        if (status && (want = nb_status_from_string(status)) == _NB_STATUS_MAX) {
                nb_reply_error(
                        ret, 400, NB_ERROR_BAD_REQUEST,
                        "status must be one of INIT, CREATING, ACTIVE, CREATE_FAILED, ERROR, DELETED");
                return;
        }
        if (m->n_images > 1)
                qsort(m->images, m->n_images, sizeof(*m->images), cmp_newest);
        cJSON *j = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(j, "images");
        size_t n = 0;
        for (size_t i = 0; a && i < m->n_images && n < NB_LIST_MAX; i++) {
                if (status && m->images[i]->status != want)
                        continue;
                cJSON_AddItemToArray(a, nb_image_to_json(m->images[i]));
                n++;
        }
        cJSON_AddNumberToObject(j, "total", (double)n);
        reply_json(ret, 200, j);
}

/* ---- DELETE: the registry call runs on a worker ------------------------------------------------------- */

static void *delete_thread(void *userdata)
{
        DeleteTask *t = userdata;
        const NbConfig *c = t->m->cfg;
        RegClientOptions co = {.url = c->registry,
                               .authfile = c->authfile,
                               .ca_file = c->ca_file,
                               .user_agent = "nbsnapd",
                               .connect_timeout_s = 15,
                               .low_speed_time_s = 30};
        RegClient *client = NULL;
        int r = reg_client_new(&co, &client, &t->error);
        if (r >= 0)
                r = reg_manifest_delete(client, t->repository, t->digest, &t->error);
        reg_client_free(client);
        t->result = r;
        atomic_store(&t->finished, true);
        (void)eventfd_write(t->m->wake_fd, 1);
        return NULL;
}

static void delete_free(DeleteTask *t)
{
        free(t->repository);
        free(t->digest);
        free(t);
}

static void delete_finish(Manager *m, DeleteTask *t)
{
        NbReply reply = {0};
        pthread_join(t->thread, NULL);
        NbImage *img = image_find(m, t->id);
        if (!img)
                nb_reply_error(&reply, 404, NB_ERROR_NOT_FOUND, "image %s not found", t->id);
        else if (t->result >= 0 || t->error.http_status == 404) {
                nb_image_set_status(img, NB_STATUS_DELETED, "deleted from the registry (%s@%s)%s",
                                    t->repository, t->digest,
                                    t->result < 0 ? "; the registry no longer had the manifest" : "");
                log_image(LOG_NOTICE, img->id, "deleted", "%s", img->status_message);
                image_record(m, img, true);
                reply_json(&reply, 200, nb_image_to_json(img));
        } else if (t->error.http_status >= 400 && t->error.http_status < 500) {
                log_image(LOG_WARNING, img->id, NULL, "registry refused the deletion: %s", t->error.msg);
                nb_reply_error(&reply, 403, NB_ERROR_FORBIDDEN,
                               "the registry refused to delete the image: %s", t->error.msg);
        } else {
                log_image(LOG_WARNING, img->id, NULL, "cannot delete: %s", t->error.msg);
                nb_reply_error(&reply, 502, NB_ERROR_BAD_GATEWAY, "cannot delete the image: %s",
                               t->error.msg);
        }
        t->done(t->userdata, &reply);
        nb_reply_done(&reply);
        delete_free(t);
}

int manager_delete_image(Manager *m, const char *id, NbReplyDone done, void *userdata, NbReply *ret)
{
        NbImage *img = image_find(m, id);
        if (!img) {
                nb_reply_error(ret, 404, NB_ERROR_NOT_FOUND, "image %.64s not found", id);
                return 0;
        }
        if (image_busy(m, img)) {
                nb_reply_error(
                        ret, 409, NB_ERROR_CONFLICT, "image %s is %s; it can be deleted when that ends", id,
                        m->job && strcmp(m->job->img.id, id) == 0 ? "still being saved" : "being deleted");
                return 0;
        }
        if (img->status == NB_STATUS_DELETED) {
                reply_json(ret, 200, nb_image_to_json(img));
                return 0;
        }
        if (img->status != NB_STATUS_ACTIVE || !img->manifest_digest || !img->repository) {
                /* nothing was pushed under its tag: only the record changes */
                nb_image_set_status(img, NB_STATUS_DELETED, "deleted (it was %s; nothing in the registry)",
                                    nb_status_to_string(img->status));
                image_record(m, img, true);
                reply_json(ret, 200, nb_image_to_json(img));
                return 0;
        }
        size_t slot = 0;
        while (slot < NB_DELETES_MAX && m->deletes[slot])
                slot++;
        if (slot == NB_DELETES_MAX || m->stopping) {
                nb_reply_error(ret, 503, NB_ERROR_UNAVAILABLE, "too many deletions running; try again");
                return 0;
        }
        DeleteTask *t = calloc(1, sizeof(*t));
        if (!t || !(t->repository = strdup(img->repository)) ||
            !(t->digest = strdup(img->manifest_digest))) {
                if (t)
                        delete_free(t);
                nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "out of memory");
                return 0;
        }
        t->m = m;
        memcpy(t->id, img->id, sizeof(t->id));
        t->done = done;
        t->userdata = userdata;
        int r = pthread_create(&t->thread, NULL, delete_thread, t);
        if (r != 0) {
                delete_free(t);
                nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "cannot start a worker: %s", strerror(r));
                return 0;
        }
        m->deletes[slot] = t;
        return 1;
}

static void deletes_sync(Manager *m, bool wait)
{
        for (size_t i = 0; i < NB_DELETES_MAX; i++) {
                DeleteTask *t = m->deletes[i];
                if (t && (wait || atomic_load(&t->finished))) {
                        m->deletes[i] = NULL;
                        delete_finish(m, t);
                }
        }
}

/* ---- health and metrics ---------------------------------------------------------------------------------
 */

void manager_health(Manager *m, bool full, NbReply *ret)
{
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "status",
                                m->ready && !m->stopping ? "ok"
                                : m->stopping            ? "stopping"
                                                         : "starting");
        if (full) {
                cJSON_AddStringToObject(j, "project_id", m->cfg->project_id);
                cJSON_AddStringToObject(j, "notebook_id", m->cfg->notebook_id);
                cJSON_AddBoolToObject(j, "saving", m->job != NULL);
                if (m->job)
                        cJSON_AddStringToObject(j, "image_id", m->job->img.id);
                cJSON_AddNumberToObject(j, "outbox", (double)nb_outbox_count(m->store));
        }
        reply_json(ret, m->ready && !m->stopping ? 200 : 503, j);
}

typedef struct Buf {
        char *data;
        size_t len, cap;
        bool failed;
} Buf;

static void buf_printf(Buf *b, const char *fmt, ...) _printf_(2, 3);
static void buf_printf(Buf *b, const char *fmt, ...)
{
        for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
                va_list ap;
                va_start(ap, fmt);
                int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
                va_end(ap);
                if (n < 0) {
                        b->failed = true;
                        return;
                }
                if (b->data && b->len + (size_t)n < b->cap) {
                        b->len += (size_t)n;
                        return;
                }
                size_t cap = (b->cap + (size_t)n + 1) * 2;
                char *d = realloc(b->data, cap);
                if (!d) {
                        b->failed = true;
                        return;
                }
                b->data = d;
                b->cap = cap;
        }
}

void manager_metrics(Manager *m, NbReply *ret)
{
        Buf b = {0};
        buf_printf(
                &b,
                "# HELP nbsnap_saves_total Saves finished, by result.\n# TYPE nbsnap_saves_total counter\n");
        static const NbStatus results[] = {NB_STATUS_ACTIVE, NB_STATUS_CREATE_FAILED, NB_STATUS_ERROR};
        for (size_t i = 0; i < ELEMENTSOF(results); i++)
                buf_printf(&b, "nbsnap_saves_total{result=\"%s\"} %" PRIu64 "\n",
                           nb_status_to_string(results[i]), m->saves[results[i]]);
        uint64_t sent = 0;
        if (m->job) {
                pthread_mutex_lock(&m->job->lock);
                sent = m->job->progress.sent;
                pthread_mutex_unlock(&m->job->lock);
        }
        buf_printf(&b,
                   "# HELP nbsnap_bytes_pushed_total Compressed layer bytes uploaded to the registry.\n"
                   "# TYPE nbsnap_bytes_pushed_total counter\nnbsnap_bytes_pushed_total %" PRIu64 "\n",
                   m->bytes_pushed + sent);
        buf_printf(&b, "# HELP nbsnap_save_duration_seconds Duration of finished saves.\n"
                       "# TYPE nbsnap_save_duration_seconds histogram\n");
        uint64_t cum = 0;
        for (size_t i = 0; i < ELEMENTSOF(duration_buckets); i++) {
                cum += m->duration_counts[i];
                buf_printf(&b, "nbsnap_save_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                           duration_buckets[i], cum);
        }
        cum += m->duration_counts[ELEMENTSOF(duration_buckets)];
        buf_printf(&b, "nbsnap_save_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
        buf_printf(&b,
                   "nbsnap_save_duration_seconds_sum %.3f\nnbsnap_save_duration_seconds_count %" PRIu64 "\n",
                   m->duration_sum, m->duration_count);
        int current = -1;
        if (m->job) {
                pthread_mutex_lock(&m->job->lock);
                current = m->job->have_progress ? (int)m->job->progress.phase : -1;
                pthread_mutex_unlock(&m->job->lock);
        }
        buf_printf(&b, "# HELP nbsnap_save_phase The phase of the running save (1), idle when none.\n"
                       "# TYPE nbsnap_save_phase gauge\n");
        buf_printf(&b, "nbsnap_save_phase{phase=\"idle\"} %d\n", m->job ? 0 : 1);
        for (int p = 0; p < _NB_PHASE_MAX; p++)
                buf_printf(&b, "nbsnap_save_phase{phase=\"%s\"} %d\n", nb_phase_to_string((NbPhase)p),
                           current == p ? 1 : 0);
        buf_printf(
                &b,
                "# HELP nbsnap_save_in_progress 1 while a save runs.\n# TYPE nbsnap_save_in_progress gauge\n"
                "nbsnap_save_in_progress %d\n",
                m->job ? 1 : 0);
        buf_printf(&b,
                   "# HELP nbsnap_outbox_reports Reports not yet acknowledged by the control plane.\n"
                   "# TYPE nbsnap_outbox_reports gauge\nnbsnap_outbox_reports %zu\n",
                   nb_outbox_count(m->store));
        if (b.failed) {
                free(b.data);
                nb_reply_error(ret, 500, NB_ERROR_INTERNAL, "out of memory");
                return;
        }
        nb_reply_done(ret);
        ret->status = 200;
        ret->body = b.data;
        ret->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

/* ---- lifecycle ------------------------------------------------------------------------------------------
 */

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        Manager *m = userdata;
        eventfd_t v;
        (void)eventfd_read(fd, &v);
        if (m->job && !m->job_abandoned)
                job_sync(m);
        deletes_sync(m, false);
        return 0;
}

static void registry_host(const char *url, char *buf, size_t size)
{
        const char *p = strstr(url, "://");
        p = p ? p + 3 : url;
        size_t n = strcspn(p, "/?#");
        snprintf(buf, size, "%.*s", (int)n, p);
}

int manager_new(const NbConfig *cfg, sd_event *event, Manager **ret, NbError *e)
{
        Manager *m = calloc(1, sizeof(*m));
        if (!m)
                return nb_error_oom(e);
        m->cfg = cfg;
        m->event = sd_event_ref(event);
        m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        registry_host(cfg->registry, m->registry_host, sizeof(m->registry_host));
        int r = m->wake_fd < 0 ? -errno
                               : sd_event_add_io(event, &m->wake_source, m->wake_fd, EPOLLIN, on_wake, m);
        if (r < 0) {
                manager_free(m);
                return nb_error_set(e, r, "cannot set up the worker wake-up: %s", strerror(-r));
        }
        r = nb_store_open(cfg->state_dir ? cfg->state_dir : NB_DEFAULT_STATE_DIR, &m->store, e);
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m)
{
        if (!m)
                return NULL;
        deletes_sync(m, true);
        if (m->job && !m->job_abandoned) {
                job_cancel(m->job);
                pthread_join(m->job->thread, NULL);
                job_free(m->job);
        }
        /* an abandoned save worker still uses its job and the store: both stay for the process exit */
        nb_reporter_free(m->reporter);
        for (size_t i = 0; i < m->n_images; i++)
                nb_image_free(m->images[i]);
        free(m->images);
        if (!m->job_abandoned)
                nb_store_free(m->store);
        sd_event_source_disable_unref(m->wake_source);
        sd_event_source_disable_unref(m->stop_timer);
        if (m->wake_fd >= 0 && !m->job_abandoned)
                close(m->wake_fd);
        sd_event_unref(m->event);
        free(m);
        return NULL;
}

/* Saves a crash interrupted: no resuming (the upload session and the walk are gone); the record says so. */
static void recover(Manager *m, NbImage *img)
{
        char when[32];
        nb_rfc3339(img->update_at, when);
        char msg[NB_STATUS_MESSAGE_MAX];
        snprintf(msg, sizeof(msg), "the agent stopped during the save (it was %s at %s: %.600s); save again",
                 nb_status_to_string(img->status), when,
                 img->status_message && img->status_message[0] ? img->status_message : "starting");
        nb_image_set_status(img, NB_STATUS_CREATE_FAILED, "%s", msg);
        log_image(LOG_WARNING, img->id, "failed", "%s", msg);
        m->saves[NB_STATUS_CREATE_FAILED]++;
        image_record(m, img, true);
}

int manager_start(Manager *m, NbError *e)
{
        size_t bad = 0;
        int r = nb_store_load_images(m->store, &m->images, &m->n_images, &bad, e);
        if (r < 0)
                return r;
        if (bad > 0)
                log_warning("%zu unreadable image record(s) in the state dir, ignoring", bad);
        if (nb_store_stale_removed(m->store) > 0)
                log_notice("removed %zu temporary file(s) a crash left in the state dir",
                           nb_store_stale_removed(m->store));
        NbError re = {0};
        if (nb_store_room(m->store, &re) < 0)
                log_warning("%s (saves are refused until then)", re.msg);
        if (m->cfg->report_url) {
                _cleanup_free_ char *token = NULL;
                if (m->cfg->token_file && (r = nb_token_read(m->cfg->token_file, &token, e)) < 0)
                        return r;
                r = nb_reporter_new(m->store, m->cfg->report_url, token, m->cfg->ca_file,
                                    m->cfg->report_retry_max_sec, &m->reporter, e);
                if (token)
                        explicit_bzero(token, strlen(token));
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < m->n_images; i++)
                if (m->images[i]->status == NB_STATUS_INIT || m->images[i]->status == NB_STATUS_CREATING)
                        recover(m, m->images[i]);
        log_info("%zu image record(s) loaded from the state dir", m->n_images);
        return 0;
}

void manager_set_ready(Manager *m)
{
        m->ready = true;
        (void)sd_notify(false, "READY=1");
        notify_status(m);
}

static int on_stop_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
        Manager *m = userdata;
        if (!m->job)
                return sd_event_exit(m->event, 0);
        NbImage *img = image_find(m, m->job->img.id);
        if (img) {
                nb_image_set_status(
                        img, NB_STATUS_CREATE_FAILED,
                        "the agent stopped during the save (SIGTERM; the save did not stop within %u "
                        "s); save again",
                        m->cfg->stop_timeout_sec);
                log_image(LOG_ERR, img->id, "failed", "%s", img->status_message);
                m->saves[NB_STATUS_CREATE_FAILED]++;
                image_record(m, img, true);
        }
        m->job_abandoned = true; /* the process exits with the worker still in nb_save */
        return sd_event_exit(m->event, 0);
}

void manager_request_stop(Manager *m)
{
        if (m->stopping)
                return;
        m->stopping = true;
        (void)sd_notify(false, "STOPPING=1");
        if (!m->job) {
                notify_status(m);
                sd_event_exit(m->event, 0);
                return;
        }
        log_image(LOG_NOTICE, m->job->img.id, NULL, "stopping: cancelling the save (waiting up to %u s)",
                  m->cfg->stop_timeout_sec);
        job_cancel(m->job);
        uint64_t usec = (uint64_t)m->cfg->stop_timeout_sec * 1000000ull;
        if (sd_event_add_time_relative(m->event, &m->stop_timer, CLOCK_MONOTONIC, usec, 0, on_stop_timeout,
                                       m) < 0)
                sd_event_exit(m->event, 0);
        notify_status(m);
}
