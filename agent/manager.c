#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "agent/chain.h"
#include "agent/job.h"
#include "agent/list.h"
#include "agent/log.h"
#include "agent/manager.h"
#include "agent/metrics.h"
#include "agent/reporter.h"
#include "agent/sessions.h"
#include "agent/request.h"
#include "agent/store.h"
#include "agent/swr.h"
#include "common/clock.h"
#include "common/uuid.h"
#include "registry/registry.h"

typedef struct DeleteTask {
        Manager *m;
        pthread_t thread;
        char id[37];
        char *repository, *digest;
        ManagerDeleted done; /* NULL: a cleanup after a cancelled save (the record is DELETED already) */
        void *userdata;
        /* worker result, read after the join */
        int result;
        NbError error;
        _Atomic bool finished;
} DeleteTask;

/* The running save, loop side. */
typedef struct Saving {
        Job *job;
        char id[37];
        NbPhase shown_phase;
        bool creating_recorded;
        bool store_failed; /* the record of the save could not be written: the save was stopped */
        NbError store_error;
} Saving;

struct Manager {
        const NbConfig *cfg;
        NbStore *store;
        NbReporter *reporter;
        NbImage **images;
        size_t n_images;
        Saving save; /* save.job NULL when none runs */
        bool save_abandoned;
        /* saves cancelled by a DELETE: their records are DELETED, their workers still end (a chunk on the
         * wire finishes, the upload session is deleted on the registry) */
        Job *cancelled[NB_CANCELLED_MAX];
        bool cancelled_abandoned;
        /* NB_DELETES_MAX asked for by DELETE, and room for the cleanups of cancelled saves besides */
        DeleteTask *deletes[NB_DELETES_MAX + NB_CANCELLED_MAX];
        int wake_fd;
        bool ready, stopping;
        char *registry_host;
        ManagerChanged changed;
        void *changed_userdata;
        NbMetrics metrics;
        pthread_t sessions_thread;  /* deletes the upload sessions of saves that died, at start */
        _Atomic bool sessions_stop; /* set by manager_free: the start-up cleanup ends early */
        bool have_sessions_thread;
};

bool manager_transition_allowed(NbStatus from, NbStatus to)
{
        switch (from) {
        case NB_STATUS_INIT:
        case NB_STATUS_CREATING:
                /* a save may end before the loop has seen it progress: INIT -> ACTIVE is possible */
                return to == NB_STATUS_CREATING || to == NB_STATUS_ACTIVE || to == NB_STATUS_CREATE_FAILED ||
                       to == NB_STATUS_ERROR || to == NB_STATUS_DELETED;
        case NB_STATUS_ACTIVE:
        case NB_STATUS_CREATE_FAILED:
        case NB_STATUS_ERROR:
                return to == NB_STATUS_DELETED;
        default:
                return false;
        }
}

static void changed(Manager *m)
{
        if (m->changed)
                m->changed(m->changed_userdata);
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

static bool image_saving(const Manager *m, const char *id)
{
        return m->save.job && strcmp(m->save.id, id) == 0;
}

static bool image_busy(Manager *m, const NbImage *img)
{
        if (image_saving(m, img->id))
                return true;
        for (size_t i = 0; i < ELEMENTSOF(m->deletes); i++)
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

/* The report of img's status into the outbox (durable), then the reporter; a failure is logged. */
static int image_report(Manager *m, const NbImage *img, NbError *ret_e)
{
        if (!m->cfg->report_url)
                return 0;
        _cleanup_free_ char *json = nb_image_to_string(img, false);
        int q = json ? nb_outbox_push(m->store, json, NULL, ret_e) : nb_error_oom(ret_e);
        if (q < 0)
                log_image(LOG_ERR, img->id, NULL, "cannot queue the report of status %s: %s",
                          nb_status_to_string(img->status), ret_e->msg);
        else
                nb_reporter_kick(m->reporter);
        return q;
}

/* Every state change: the record first (durable), then the outbox (durable), then the reporter. Each
 * failure is logged here; the first one is also returned in *ret_e (may be NULL). */
static int image_record_e(Manager *m, const NbImage *img, bool report, NbError *ret_e)
{
        NbError e = {0}, q_e = {0};
        int r = nb_store_put_image(m->store, img, &e);
        if (r < 0)
                log_image(LOG_ERR, img->id, NULL, "%s", e.msg);
        int q = report ? image_report(m, img, &q_e) : 0;
        if (ret_e && (r < 0 || q < 0))
                *ret_e = r < 0 ? e : q_e;
        return r < 0 ? r : q;
}

static int image_record(Manager *m, const NbImage *img, bool report)
{
        return image_record_e(m, img, report, NULL);
}

/* Moves img to status (the lifecycle allowing it) with a message; an invalid move is a bug: logged and
 * refused. */
static int image_transition(NbImage *img, NbStatus to, const char *fmt, ...) _printf_(3, 4);
static int image_transition(NbImage *img, NbStatus to, const char *fmt, ...)
{
        if (!manager_transition_allowed(img->status, to)) {
                log_image(LOG_ERR, img->id, NULL, "refusing the status change %s -> %s",
                          nb_status_to_string(img->status), nb_status_to_string(to));
                return -EINVAL;
        }
        char msg[NB_STATUS_MESSAGE_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        return nb_image_set_status(img, to, "%s", msg);
}

/* ---- the running save -----------------------------------------------------------------------------------
 */

/* The worker's image replaces the record; the save's outcome is counted, logged, recorded, reported. */
static void save_finish(Manager *m)
{
        Saving *s = &m->save;
        JobState st;
        job_poll(s->job, &st);
        NbImage done = {0};
        NbError e = {0};
        (void)job_join(s->job, &done, &e);
        double secs = (double)(nb_now_ms() - job_started_ms(s->job)) / 1000.0;
        s->job = job_free(s->job);
        NbImage *img = image_find(m, s->id);
        if (!img) { /* cannot happen: records of running saves are never pruned */
                nb_image_done(&done);
                return;
        }
        nb_image_done(img);
        *img = done; /* moved */
        if (img->status != NB_STATUS_ACTIVE && img->status != NB_STATUS_CREATE_FAILED)
                nb_image_set_status(img, NB_STATUS_CREATE_FAILED, "%s", e.msg);
        if (s->store_failed && img->status != NB_STATUS_ACTIVE)
                nb_image_set_status(img, NB_STATUS_CREATE_FAILED,
                                    "the save was stopped because the state dir %s cannot be written: %s; "
                                    "make room there or make it writable, then save again",
                                    m->cfg->state_dir ? m->cfg->state_dir : NB_DEFAULT_STATE_DIR,
                                    s->store_error.msg);
        nb_metrics_count_save(&m->metrics, img->status, st.progress.sent, secs);
        if (img->status == NB_STATUS_ACTIVE) {
                nb_metrics_count_success(&m->metrics, img->update_at, img->layer_bytes,
                                         img->layer_bytes_uncompressed);
                log_image(LOG_NOTICE, img->id, "done", "saved as %s (%s), %" PRId64 " KB", img->swr_path,
                          img->manifest_digest, img->size_kb);
        } else
                log_image(LOG_ERR, img->id, "failed", "save failed: %s", img->status_message);
        image_record(m, img, true);
}

/* A record of a running save could not be written (state dir read-only, or full beyond the reserve): the
 * save is stopped, once. Going on would push an image whose end could not be recorded; the record on disk
 * stays at the last phase written, and the next start marks it CREATE_FAILED. */
static void save_record_failed(Manager *m, const NbError *e)
{
        m->save.store_failed = true;
        m->save.store_error = *e;
        log_image(LOG_ERR, m->save.id, NULL, "stopping the save, its end could not be recorded: %s", e->msg);
        job_cancel(m->save.job);
}

/* The first progress makes the record CREATING (recorded and reported); each new phase is recorded; the
 * worker is let on once its phase's record was tried. */
static void save_progress(Manager *m, NbImage *img, const NbProgress *p)
{
        Saving *s = &m->save;
        char msg[NB_STATUS_MESSAGE_MAX];
        NbError e = {0};
        int r = 0;
        NbProgressView v;
        job_progress_view(s->job, p, &v);
        job_progress_message(s->job, p, &v, msg, sizeof(msg));
        if (image_transition(img, NB_STATUS_CREATING, "%s", msg) >= 0) {
                img->progress = (NbImageProgress){
                        .set = true,
                        .percent = v.percent,
                        .bytes_done = p->done < p->total ? p->done : p->total,
                        .bytes_total = p->total,
                        .bytes_per_second = v.rate,
                        .eta_seconds = v.eta_sec,
                };
                if (!s->creating_recorded) {
                        s->creating_recorded = true;
                        s->shown_phase = p->phase;
                        log_image(LOG_INFO, img->id, nb_phase_to_string(p->phase), "saving: %s", msg);
                        r = image_record_e(m, img, true, &e);
                } else if (p->phase != s->shown_phase) {
                        s->shown_phase = p->phase;
                        log_image(LOG_INFO, img->id, nb_phase_to_string(p->phase), "%s", msg);
                        r = image_record_e(m, img, false, &e);
                }
        }
        if (r < 0 && !s->store_failed)
                save_record_failed(m, &e);
        job_recorded(s->job, p->phase);
}

static void save_sync(Manager *m)
{
        JobState st;
        job_poll(m->save.job, &st);
        NbImage *img = image_find(m, m->save.id);
        if (st.have_progress && img)
                save_progress(m, img, &st.progress);
        if (st.done)
                save_finish(m);
        changed(m);
}

static int save_start(Manager *m, const NbImage *img, NbError *e)
{
        int r = job_start(m->cfg, img, m->wake_fd, &m->save.job, e);
        if (r < 0)
                return -EIO; /* an internal failure, whatever the errno */
        m->save = (Saving){.job = m->save.job};
        memcpy(m->save.id, img->id, sizeof(m->save.id));
        return 0;
}

static bool cancelled_running(const Manager *m)
{
        for (size_t i = 0; i < NB_CANCELLED_MAX; i++)
                if (m->cancelled[i])
                        return true;
        return false;
}

void manager_abandon_save(Manager *m, unsigned waited_sec)
{
        if (cancelled_running(m)) {
                log_warning("%u s after the stop, a cancelled save is still deleting its upload session; "
                            "leaving it for the exit",
                            waited_sec);
                m->cancelled_abandoned = true;
        }
        if (!m->save.job)
                return;
        NbImage *img = image_find(m, m->save.id);
        if (img && image_transition(img, NB_STATUS_CREATE_FAILED,
                                    "the agent stopped during the save (SIGTERM; the save did not stop "
                                    "within %u s); save again",
                                    waited_sec) >= 0) {
                log_image(LOG_ERR, img->id, "failed", "%s", img->status_message);
                nb_metrics_count_result(&m->metrics, NB_STATUS_CREATE_FAILED);
                image_record(m, img, true);
        }
        m->save_abandoned = true; /* the process exits with the worker still in nb_save */
}

/* ---- create, get, list ----------------------------------------------------------------------------------
 */

const char *manager_project_id(const Manager *m)
{
        return m->cfg->project_id;
}

const char *manager_notebook_id(const Manager *m)
{
        return m->cfg->notebook_id;
}

static int image_new(Manager *m, const NbCreateRequest *rq, int64_t now, NbImage **ret)
{
        const NbImageNames names = {.namespace = rq->namespace,
                                    .name = rq->name,
                                    .tag = rq->tag,
                                    .description = rq->description,
                                    .workspace_id = rq->workspace_id,
                                    .swr_instance_id = rq->swr_instance_id,
                                    .swr_instance_domain = rq->swr_instance_domain};
        _cleanup_nb_image_ NbImage *img = NULL;
        _cleanup_free_ char *swr = NULL, *repo = NULL;
        char arch[NB_ARCH_MAX];
        if (nb_image_new(&names, now, &img) < 0 ||
            nb_swr_path(m->registry_host, rq->namespace, rq->name, rq->tag, &swr) < 0 ||
            asprintf(&repo, "%s/%s", rq->namespace, rq->name) < 0 || nb_image_set(&img->swr_path, swr) < 0 ||
            nb_image_set(&img->repository, repo) < 0 ||
            nb_image_set(&img->arch, nb_machine_arch_modelarts(arch)) < 0 ||
            nb_image_set_exclude_paths(img, rq->exclude_paths, rq->n_exclude_paths) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(img);
        return 0;
}

/* A state dir failure as the manager reports it: full, or an internal failure. */
static int store_failure(int r)
{
        return r == -ENOSPC || r == -EDQUOT ? r : -EIO;
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

static int create_request(Manager *m, const char *body, size_t size, int64_t now, NbCreateRequest *rq,
                          NbError *e)
{
        int r = nb_create_request_parse(body, size, rq, e);
        if (r >= 0)
                r = nb_create_request_defaults(rq, m->cfg->namespace, m->cfg->base_image, now, e);
        if (r >= 0)
                r = nb_create_request_unique_tag(rq, image_tag_taken, m, e);
        if (r < 0)
                return r == -E2BIG || r == -ENOMEM ? r : -EINVAL;
        if (m->stopping)
                return nb_error_set(e, -ESHUTDOWN, "the agent is stopping; save again later");
        if (m->save.job) {
                const NbImage *j = job_image(m->save.job);
                return nb_error_set(e, -EBUSY,
                                    "a save is already running for this instance (image %s, %s/%s:%s); one "
                                    "save at a time",
                                    j->id, j->namespace, j->name, j->tag);
        }
        r = nb_store_room(m->store, e);
        if (r < 0) {
                log_error("refusing a save: %s", e->msg);
                return store_failure(r);
        }
        return 0;
}

/* Adds the INIT record (durable, reported) for rq. */
static int create_record(Manager *m, const NbCreateRequest *rq, int64_t now, NbImage **ret, NbError *e)
{
        images_prune(m);
        NbImage *img = NULL;
        NbImage **nv = realloc(m->images, (m->n_images + 1) * sizeof(*nv));
        if (nv)
                m->images = nv;
        if (!nv || image_new(m, rq, now, &img) < 0)
                return nb_error_oom(e);
        int r = record_new(m, img, e);
        if (r < 0) {
                log_image(LOG_ERR, img->id, NULL, "refusing the save: %s", e->msg);
                NbError w = *e;
                nb_error_set(e, r, "cannot record the image in the state dir: %s", w.msg);
                nb_image_free(img);
                return store_failure(r);
        }
        m->images[m->n_images++] = img;
        *ret = img;
        return 0;
}

int manager_create_image(Manager *m, const char *body, size_t size, const NbImage **ret, NbError *e)
{
        _cleanup_(nb_create_request_done) NbCreateRequest rq = {0};
        int64_t now = nb_now_ms();
        NbImage *img = NULL;
        int r = create_request(m, body, size, now, &rq, e);
        if (r >= 0)
                r = create_record(m, &rq, now, &img, e);
        if (r < 0)
                return r;
        if (!img) /* cannot happen: create_record() sets it on success (said for the compiler's sake) */
                return nb_error_set(e, -EIO, "internal error: no image record");
        log_image(LOG_NOTICE, img->id, "init", "save requested: %s (%s)", img->swr_path,
                  img->description[0] ? img->description : "no description");
        r = save_start(m, img, e);
        if (r < 0) {
                image_transition(img, NB_STATUS_ERROR, "%s", e->msg);
                log_image(LOG_ERR, img->id, "failed", "%s", e->msg);
                nb_metrics_count_result(&m->metrics, NB_STATUS_ERROR);
                image_record(m, img, true);
                return r;
        }
        changed(m);
        *ret = img;
        return 0;
}

int manager_get_image(Manager *m, const char *id, const NbImage **ret, NbError *e)
{
        const NbImage *img = image_find(m, id);
        if (!img)
                return nb_error_set(e, -ENOENT, "image %.64s not found", id);
        *ret = img;
        return 0;
}

static int cmp_query(const void *a, const void *b, void *userdata)
{
        return nb_list_query_compare(userdata, *(NbImage *const *)a, *(NbImage *const *)b);
}

int manager_list_images(Manager *m, const NbListQuery *q, const NbImage ***ret, size_t *ret_n, NbError *e)
{
        const NbImage **v = calloc(m->n_images + 1, sizeof(*v));
        if (!v)
                return nb_error_oom(e);
        size_t n = 0;
        for (size_t i = 0; i < m->n_images; i++)
                if (nb_list_query_match(q, m->images[i]))
                        v[n++] = m->images[i];
        if (n > 1)
                qsort_r(v, n, sizeof(*v), cmp_query, (void *)q);
        *ret = v;
        *ret_n = n;
        return 0;
}

/* ---- DELETE: the registry call runs on a worker ------------------------------------------------------- */

static void *delete_thread(void *userdata)
{
        DeleteTask *t = userdata;
        const NbConfig *c = t->m->cfg;
        RegClientOptions co = nb_reg_client_options(c->registry, c->authfile, c->ca_file);
        co.connect_timeout_s = 15;
        co.low_speed_time_s = 30;
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

/* The registry's answer: deleted (or already gone), refused (4xx: -EPERM), or failed (-EREMOTEIO). */
static int delete_outcome(Manager *m, DeleteTask *t, NbImage *img, NbError *e)
{
        if (!img)
                return nb_error_set(e, -ENOENT, "image %s not found", t->id);
        if (t->result >= 0 || t->error.http_status == 404) {
                image_transition(img, NB_STATUS_DELETED, "deleted from the registry (%s@%s)%s",
                                 t->repository, t->digest,
                                 t->result < 0 ? "; the registry no longer had the manifest" : "");
                log_image(LOG_NOTICE, img->id, "deleted", "%s", img->status_message);
                image_record(m, img, true);
                return 0;
        }
        if (t->error.http_status >= 400 && t->error.http_status < 500) {
                log_image(LOG_WARNING, img->id, NULL, "registry refused the deletion: %s", t->error.msg);
                return nb_error_set(e, -EPERM, "the registry refused to delete the image: %s", t->error.msg);
        }
        log_image(LOG_WARNING, img->id, NULL, "cannot delete: %s", t->error.msg);
        return nb_error_set(e, -EREMOTEIO, "cannot delete the image: %s", t->error.msg);
}

static void delete_finish(Manager *m, DeleteTask *t)
{
        NbError e = {0};
        pthread_join(t->thread, NULL);
        if (!t->done) {
                if (t->result >= 0 || t->error.http_status == 404)
                        log_image(LOG_NOTICE, t->id, NULL, "deleted %s@%s, which the cancelled save pushed",
                                  t->repository, t->digest);
                else
                        log_image(LOG_ERR, t->id, NULL,
                                  "cannot delete %s@%s, which the cancelled save pushed: %s", t->repository,
                                  t->digest, t->error.msg);
                delete_free(t);
                return;
        }
        NbImage *img = image_find(m, t->id);
        int r = delete_outcome(m, t, img, &e);
        t->done(t->userdata, r, r >= 0 ? img : NULL, &e);
        delete_free(t);
}

/* A registry deletion of repository@digest on a worker for image id; done NULL: a cleanup (logged only). */
static int delete_start(Manager *m, const char *id, const char *repository, const char *digest,
                        ManagerDeleted done, void *userdata, NbError *e)
{
        /* the DELETEs asked for share NB_DELETES_MAX slots; a cleanup (done NULL) takes any free one, so
         * that the manifest of a cancelled save is deleted however many DELETEs run */
        size_t slot = ELEMENTSOF(m->deletes), asked = 0;
        for (size_t i = 0; i < ELEMENTSOF(m->deletes); i++) {
                if (!m->deletes[i]) {
                        if (slot == ELEMENTSOF(m->deletes))
                                slot = i;
                } else if (m->deletes[i]->done)
                        asked++;
        }
        if (done && m->stopping)
                return nb_error_set(e, -ESHUTDOWN, "the agent is stopping: no new deletion");
        if (slot == ELEMENTSOF(m->deletes) || (done && asked >= NB_DELETES_MAX))
                return nb_error_set(e, -EAGAIN, "too many deletions running; try again");
        DeleteTask *t = calloc(1, sizeof(*t));
        if (!t || !(t->repository = strdup(repository)) || !(t->digest = strdup(digest))) {
                if (t)
                        delete_free(t);
                return nb_error_oom(e);
        }
        t->m = m;
        snprintf(t->id, sizeof(t->id), "%s", id);
        t->done = done;
        t->userdata = userdata;
        int r = pthread_create(&t->thread, NULL, delete_thread, t);
        if (r != 0) {
                delete_free(t);
                nb_error_set(e, -r, "cannot start a worker: %s", strerror(r));
                return -EIO;
        }
        m->deletes[slot] = t;
        return 1;
}

/* ---- cancel: DELETE of the running save ------------------------------------------------------------- */

/* The cancelled save's worker ended. Its image is dropped (the record says DELETED); if it pushed its
 * manifest before it saw the cancel (a PUT on the wire is let finish), the manifest is deleted. */
static void cancelled_finish(Manager *m, Job *j)
{
        NbImage done = {0};
        NbError e = {0};
        int r = job_join(j, &done, &e);
        job_free(j);
        if (r >= 0 && done.status == NB_STATUS_ACTIVE && done.manifest_digest && done.repository) {
                log_image(LOG_WARNING, done.id, NULL,
                          "the cancelled save pushed its manifest before it stopped; deleting %s@%s",
                          done.repository, done.manifest_digest);
                NbError de = {0};
                if (delete_start(m, done.id, done.repository, done.manifest_digest, NULL, NULL, &de) < 0)
                        log_image(LOG_ERR, done.id, NULL, "cannot delete %s@%s: %s", done.repository,
                                  done.manifest_digest, de.msg);
        } else if (r == -ECANCELED)
                log_image(LOG_INFO, done.id, NULL, "the cancelled save has ended");
        else
                log_image(LOG_INFO, done.id, NULL, "the cancelled save has ended: %s", e.msg);
        nb_image_done(&done);
}

static void cancelled_sync(Manager *m, bool wait)
{
        bool any = false;
        for (size_t i = 0; i < NB_CANCELLED_MAX; i++) {
                Job *j = m->cancelled[i];
                JobState st = {0};
                if (j && !wait)
                        job_poll(j, &st);
                if (j && (wait || st.done)) {
                        m->cancelled[i] = NULL;
                        cancelled_finish(m, j);
                        any = true;
                }
        }
        if (any)
                changed(m);
}

/* DELETE of the running save: its record becomes DELETED (written to the state dir before it is reported;
 * when it cannot be written, nothing changes), the worker is told to stop and set aside to end on its own
 * (the chunk on the wire finishes, the upload session is deleted), and the save slot is free at once. */
static int save_cancel(Manager *m, NbImage *img, NbError *e)
{
        size_t slot = 0;
        while (slot < NB_CANCELLED_MAX && m->cancelled[slot])
                slot++;
        if (slot == NB_CANCELLED_MAX)
                return nb_error_set(e, -EAGAIN,
                                    "%d cancelled saves are still ending (deleting their upload sessions on "
                                    "the registry); try again later",
                                    NB_CANCELLED_MAX);
        NbImage next = {0};
        if (nb_image_copy(img, &next) < 0)
                return nb_error_oom(e);
        image_transition(&next, NB_STATUS_DELETED,
                         "cancelled during the save (it was %s: %.600s); nothing was tagged",
                         nb_status_to_string(img->status),
                         img->status_message && img->status_message[0] ? img->status_message : "starting");
        int r = nb_store_put_image(m->store, &next, e);
        if (r < 0) {
                log_image(LOG_ERR, img->id, NULL, "cannot cancel the save: %s", e->msg);
                NbError w = *e;
                nb_error_set(e, r, "cannot record the cancel in the state dir, the save goes on: %s", w.msg);
                nb_image_done(&next);
                return store_failure(r);
        }
        nb_image_done(img);
        *img = next; /* moved */
        job_cancel(m->save.job);
        m->cancelled[slot] = m->save.job;
        m->save = (Saving){0};
        nb_metrics_count_result(&m->metrics, NB_STATUS_DELETED);
        log_image(LOG_NOTICE, img->id, "deleted", "%s", img->status_message);
        NbError q = {0};
        (void)image_report(m, img, &q);
        changed(m);
        return 0;
}

int manager_delete_image(Manager *m, const char *id, ManagerDeleted done, void *userdata,
                         const NbImage **ret, NbError *e)
{
        NbImage *img = image_find(m, id);
        if (!img)
                return nb_error_set(e, -ENOENT, "image %.64s not found", id);
        if (image_saving(m, id))
                save_sync(m); /* a save that has ended (not yet seen) is taken as it ended */
        if (image_saving(m, id)) {
                int r = save_cancel(m, img, e);
                if (r < 0)
                        return r;
                *ret = img;
                return 0;
        }
        if (img->status == NB_STATUS_DELETED) { /* also while a cancelled save's manifest is deleted */
                *ret = img;
                return 0;
        }
        if (image_busy(m, img))
                return nb_error_set(e, -EBUSY, "image %s is being deleted; try again when that ends", id);
        if (img->status != NB_STATUS_ACTIVE || !img->manifest_digest || !img->repository) {
                /* nothing was pushed under its tag: only the record changes */
                NbStatus was = img->status;
                image_transition(img, NB_STATUS_DELETED, "deleted (it was %s; nothing in the registry)",
                                 nb_status_to_string(was));
                image_record(m, img, true);
        }
        if (img->status == NB_STATUS_DELETED) {
                *ret = img;
                return 0;
        }
        return delete_start(m, img->id, img->repository, img->manifest_digest, done, userdata, e);
}

static void deletes_sync(Manager *m, bool wait)
{
        for (size_t i = 0; i < ELEMENTSOF(m->deletes); i++) {
                DeleteTask *t = m->deletes[i];
                if (t && (wait || atomic_load(&t->finished))) {
                        m->deletes[i] = NULL;
                        delete_finish(m, t);
                }
        }
}

/* ---- health and metrics ---------------------------------------------------------------------------------
 */

void manager_health(Manager *m, ManagerHealth *ret)
{
        *ret = (ManagerHealth){
                .ready = m->ready,
                .stopping = m->stopping,
                .image_id = m->save.job ? m->save.id : NULL,
                .outbox = nb_outbox_count(m->store),
        };
}

int manager_metrics(Manager *m, char **ret, NbError *e)
{
        NbMetricsNow now = {.saving = m->save.job != NULL, .phase = -1, .outbox = nb_outbox_count(m->store)};
        reg_retry_counts(now.retries);
        if (m->save.job) {
                JobState st;
                job_poll(m->save.job, &st);
                now.sent = st.progress.sent;
                now.phase = st.have_progress ? (int)st.progress.phase : -1;
        }
        return nb_metrics_text(&m->metrics, &now, ret, e);
}

/* ---- lifecycle ------------------------------------------------------------------------------------------
 */

int manager_wake_fd(const Manager *m)
{
        return m->wake_fd;
}

void manager_dispatch(Manager *m)
{
        eventfd_t v;
        (void)eventfd_read(m->wake_fd, &v);
        if (m->save.job && !m->save_abandoned)
                save_sync(m);
        if (!m->cancelled_abandoned)
                cancelled_sync(m, false);
        deletes_sync(m, false);
}

void manager_set_changed(Manager *m, ManagerChanged cb, void *userdata)
{
        m->changed = cb;
        m->changed_userdata = userdata;
}

int manager_new(const NbConfig *cfg, Manager **ret, NbError *e)
{
        Manager *m = calloc(1, sizeof(*m));
        if (!m)
                return nb_error_oom(e);
        m->cfg = cfg;
        m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int r = m->wake_fd < 0 ? -errno : 0;
        if (r < 0) {
                manager_free(m);
                return nb_error_set(e, r, "cannot set up the worker wake-up: %s", strerror(-r));
        }
        r = nb_registry_host(cfg->registry, &m->registry_host);
        if (r < 0) {
                manager_free(m);
                return nb_error_set(e, r, "invalid registry URL \"%s\"", cfg->registry);
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
        if (m->have_sessions_thread) {
                atomic_store(&m->sessions_stop, true);
                pthread_join(m->sessions_thread, NULL);
        }
        if (!m->cancelled_abandoned)
                cancelled_sync(m, true);
        deletes_sync(m, true);
        if (m->save.job && !m->save_abandoned) {
                job_cancel(m->save.job);
                job_free(m->save.job);
        }
        /* an abandoned save worker still uses its job, the store and the wake fd: they stay for the exit */
        nb_reporter_free(m->reporter);
        for (size_t i = 0; i < m->n_images; i++)
                nb_image_free(m->images[i]);
        free(m->images);
        free(m->registry_host);
        if (!m->save_abandoned && !m->cancelled_abandoned) {
                nb_store_free(m->store);
                if (m->wake_fd >= 0)
                        close(m->wake_fd);
        }
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
        image_transition(img, NB_STATUS_CREATE_FAILED, "%s", msg);
        log_image(LOG_WARNING, img->id, "failed", "%s", msg);
        nb_metrics_count_result(&m->metrics, NB_STATUS_CREATE_FAILED);
        image_record(m, img, true);
}

static void sessions_log(void *userdata, bool warning, const char *message)
{
        (void)userdata;
        nb_log_full(warning ? LOG_WARNING : LOG_NOTICE, 0, NULL, NULL, "%s", message);
}

/* The upload sessions that saves of an earlier run (killed, or stopped with the registry down) left open
 * are deleted off the loop: the registry may be slow or down. */
static void *sessions_thread(void *userdata)
{
        Manager *m = userdata;
        NbSessionsCleanupOptions o = {.authfile = m->cfg->authfile,
                                      .ca_file = m->cfg->ca_file,
                                      .log = sessions_log,
                                      .userdata = m,
                                      .cancel = &m->sessions_stop};
        NbSessionsCleanupStats st;
        nb_sessions_cleanup(m->cfg->state_dir ? m->cfg->state_dir : NB_DEFAULT_STATE_DIR, &o, &st);
        if (st.records > 0)
                log_notice(
                        "upload sessions left by saves that did not end: %zu deleted, %zu already gone, %zu "
                        "kept for the next try, %zu record(s) dropped",
                        st.deleted, st.gone, st.kept, st.dropped);
        return NULL;
}

static int reporter_start(Manager *m, NbError *e)
{
        _cleanup_free_ char *token = NULL;
        int r = 0;
        if (m->cfg->token_file && (r = nb_token_read(m->cfg->token_file, &token, e)) < 0)
                return r;
        r = nb_reporter_new(m->store, m->cfg->report_url, token, m->cfg->ca_file,
                            m->cfg->report_retry_max_sec, &m->reporter, e);
        if (token)
                explicit_bzero(token, strlen(token));
        return r;
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
        size_t records = nb_chain_cleanup(m->cfg->state_dir ? m->cfg->state_dir : NB_DEFAULT_STATE_DIR);
        if (records > 0)
                log_notice("removed %zu record(s) of saves that did not finish from the state dir", records);
        NbError re = {0};
        if (nb_store_room(m->store, &re) < 0)
                log_warning("%s (saves are refused until then)", re.msg);
        if (m->cfg->report_url && (r = reporter_start(m, e)) < 0)
                return r;
        int k = pthread_create(&m->sessions_thread, NULL, sessions_thread, m);
        if (k != 0)
                log_warning_errno(
                        -k, "cannot start deleting the upload sessions of earlier saves, ignoring: %m");
        m->have_sessions_thread = k == 0;
        for (size_t i = 0; i < m->n_images; i++)
                if (m->images[i]->status == NB_STATUS_INIT || m->images[i]->status == NB_STATUS_CREATING)
                        recover(m, m->images[i]);
        log_info("%zu image record(s) loaded from the state dir", m->n_images);
        return 0;
}

void manager_set_ready(Manager *m)
{
        m->ready = true;
}

bool manager_stop(Manager *m)
{
        m->stopping = true;
        if (!m->save.job)
                return cancelled_running(m);
        log_image(LOG_NOTICE, m->save.id, NULL, "stopping: cancelling the save (waiting up to %u s)",
                  m->cfg->stop_timeout_sec);
        job_cancel(m->save.job);
        return true;
}

bool manager_saving(const Manager *m)
{
        return m->save.job != NULL || cancelled_running(m);
}

void manager_describe(Manager *m, char *buf, size_t size)
{
        if (m->save.job) {
                const NbImage *j = job_image(m->save.job);
                const NbImage *img = image_find(m, m->save.id);
                snprintf(buf, size, "saving %s/%s:%s (image %s): %s", j->namespace, j->name, j->tag, j->id,
                         img && img->status_message ? img->status_message : "starting");
                return;
        }
        size_t active = 0;
        for (size_t i = 0; i < m->n_images; i++)
                active += m->images[i]->status == NB_STATUS_ACTIVE;
        snprintf(buf, size, "%s; %zu image(s), %zu active", m->stopping ? "stopping" : "idle", m->n_images,
                 active);
}
