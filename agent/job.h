/* job.h: the one save that runs at a time. A worker thread calls nb_save() below the event loop's priority
 * and posts its progress back through an eventfd (at a phase change, else at most every
 * NB_PROGRESS_POST_NS); each new phase waits until the loop has tried to record it (job_recorded()), so a
 * save whose record cannot be written stops before it pushes its tag; job_cancel() stops it soon. The loop
 * reads what the worker posted with job_poll() and takes the finished image with job_join(). The excludes
 * a save gets: the configured ones plus the agent's own secrets when they live inside the saved tree. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/config.h"
#include "agent/image.h"
#include "agent/progress.h"
#include "agent/save.h"
#include "common/error.h"

#define NB_SAVE_NICE        5 /* the save threads' nice value, relative to the loop's 0 */
#define NB_PROGRESS_POST_NS (200ull * 1000 * 1000) /* worker -> loop progress posts, at most this often */
#define NB_RECORD_WAIT_S    30 /* a save waits at most this long for its phase's record to be written */

typedef struct Job Job;

/* What the worker posted last. */
typedef struct JobState {
        NbProgress progress;
        bool have_progress; /* progress is set */
        bool done;          /* nb_save() returned: job_join() will not wait */
} JobState;

/* Copies img (id, create_at and the request fields set) and starts the worker; it writes to wake_fd (an
 * eventfd) whenever there is something to poll. cfg must outlive the job. */
int job_start(const NbConfig *cfg, const NbImage *img, int wake_fd, Job **ret, NbError *e);
/* Waits for the worker if it still runs, then frees. NULL. */
Job *job_free(Job *j);

/* The save stops soon (nb_save() returns -ECANCELED); a worker waiting for a record goes on at once. */
void job_cancel(Job *j);
void job_poll(Job *j, JobState *ret);
/* The loop tried to record phase: the worker may start its work. */
void job_recorded(Job *j, NbPhase phase);
/* The percent, rate and time left of p (agent/progress.h), the percent never below the one computed last.
 * Loop side. */
void job_progress_view(Job *j, const NbProgress *p, NbProgressView *ret);
/* "packing and uploading layer: 42% (120.0 of 300.0 MB packed, 85.3 MB/s, ETA 3s; 1234/~3000 entries
 * walked, 118.2 MB sent)"; "resolving base image: 1%" before packing. */
void job_progress_message(const Job *j, const NbProgress *p, const NbProgressView *v, char *buf,
                          size_t size);

/* The worker's copy of the image: id, namespace, name and tag never change while it runs; the rest is the
 * worker's until job_join(). */
const NbImage *job_image(const Job *j);
int64_t job_started_ms(const Job *j);

/* HOST_PATH as a path inside the container whose root is ROOT (malloc'ed), or NULL when it is outside (or
 * missing): how a save of nbsnapd excludes the agent's secrets (token_file, tls_key) that live in the tree.
 */
char *job_container_path(const char *root, const char *host_path);

/* Joins the worker; moves its image (ACTIVE or CREATE_FAILED as nb_save() left it) to *ret_img and the
 * save's error to *ret_e. Returns nb_save()'s result. Once only. */
int job_join(Job *j, NbImage *ret_img, NbError *ret_e);
