/* pzstd.c: the multithreaded zstd pipeline behind pzstd.h.
 *
 *   pzstd_write() --copy--> input Buf --> in queue --> driver: SHA-256 of the input, ZSTD_compressStream2()
 *                                                        |   (libzstd's N workers compress jobs in parallel)
 *                                                        v
 *                            writer: SHA-256 of the output, output callback <-- out queue <-- output Buf
 *
 * libzstd does the parallel part itself (ZSTD_c_nbWorkers): the driver only copies input into libzstd's job
 * buffers and waits for finished jobs, so it has the time to hash the input too. Measured on 1 GB of
 * /usr/lib on 2 cores: both digests cost ~0.8 CPU-seconds per GB against ~6 (level 1) to ~12 (level 3) for
 * the compression, and a build without the input digest was no faster than that CPU, so a hasher thread of
 * its own (as pgzip has) could not pay here; it would only when the workers outrun one core's SHA-256
 * (~1.2 GB/s), i.e. level 1 on 8+ cores. The writer is its own thread so that an output callback blocked on
 * the network never stops the driver from feeding the workers.
 *
 * Determinism: with ZSTD_c_nbWorkers >= 1 libzstd cuts the stream into jobs whose size and overlap depend
 * only on the compression parameters, so the frame is the same for 1, 2 or 64 workers. With 0 workers
 * (libzstd's default, single-threaded, blocking) the frame is DIFFERENT. We therefore always ask for at
 * least one worker: the layer's bytes (and so its digest, and registry dedup of identical saves) must not
 * depend on the number of CPUs of the machine that saved it.
 *
 * Memory is bounded: PZSTD_IN_BUFS input and PZSTD_OUT_BUFS output buffers of PZSTD_BUF_SIZE, allocated on
 * first use, plus libzstd's per-worker state. One mutex guards both queues and both pools; it is taken a
 * few thousand times a second at most. */
#include <stdarg.h>
#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "common/digest.h"
#include "common/sysinfo.h"
#include "snapshot/compress.h"
#include "snapshot/pzstd.h"

#define PZSTD_BUF_SIZE (1024u * 1024)
#define PZSTD_IN_BUFS  4 /* one being filled, two queued, one in the driver */
#define PZSTD_OUT_BUFS 4 /* one being filled by the driver, the rest queued for or in the writer */

typedef struct PZstd PZstd;

typedef struct Buf {
        struct Buf *next;     /* free list or queue */
        struct Buf *all_next; /* every buffer ever allocated, for pzstd_free() */
        size_t len;
        bool last;
        uint8_t data[];
} Buf;

typedef struct Pool {
        Buf *free;
        unsigned n_allocated, max;
        pthread_cond_t cond; /* a buffer came back */
} Pool;

typedef struct Queue {
        Buf *head, *tail;
        pthread_cond_t cond; /* a buffer was queued */
} Queue;

struct PZstd {
        snap_output_fn output;
        void *userdata;
        ZSTD_CCtx *cctx;

        pthread_mutex_t lock;
        pthread_cond_t cond_end; /* pzstd_finish(): the writer is done */
        bool lock_initialized;
        Pool in_pool, out_pool;
        Queue in_q, out_q;
        Buf *all;

        /* Producer side, only touched by the caller's thread. */
        Buf *current;
        bool finished;
        uint64_t size_in;

        EVP_MD_CTX *sha_in;  /* driver */
        EVP_MD_CTX *sha_out; /* writer */
        uint64_t size_out;   /* writer */
        Buf *driver_out;     /* the output buffer the driver is filling */

        bool stopping;
        bool writer_done;
        NbError error; /* the first failure; error.code == 0 while healthy */

        pthread_t driver, writer;
        bool driver_started, writer_started;
};

static void broadcast_all_locked(PZstd *z)
{
        pthread_cond_broadcast(&z->in_pool.cond);
        pthread_cond_broadcast(&z->out_pool.cond);
        pthread_cond_broadcast(&z->in_q.cond);
        pthread_cond_broadcast(&z->out_q.cond);
        pthread_cond_broadcast(&z->cond_end);
}

static bool halted_locked(PZstd *z)
{
        return z->stopping || z->error.code != 0;
}

/* Records the first failure and wakes everyone: every wait also waits for an error. */
_printf_(3, 4) static int fail(PZstd *z, int code, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        pthread_mutex_lock(&z->lock);
        if (snap_error_record(&z->error, code, fmt, ap))
                broadcast_all_locked(z);
        int r = z->error.code;
        pthread_mutex_unlock(&z->lock);
        va_end(ap);
        return r;
}

static int error_copy_locked(PZstd *z, NbError *e)
{
        return snap_error_copy(&z->error, "zstd", e);
}

static int error_copy(PZstd *z, NbError *e)
{
        pthread_mutex_lock(&z->lock);
        int r = error_copy_locked(z, e);
        pthread_mutex_unlock(&z->lock);
        return r;
}

/* ---- pools and queues ---- */

/* Takes a buffer from the pool, allocating one while the pool is below its size; waits while all are busy.
 * Each pool has one taker (in: the producer, out: the driver). */
static int buf_get(PZstd *z, Pool *p, Buf **ret)
{
        Buf *b = NULL;
        pthread_mutex_lock(&z->lock);
        while (!p->free && p->n_allocated >= p->max && !halted_locked(z))
                pthread_cond_wait(&p->cond, &z->lock);
        if (!halted_locked(z) && p->free) {
                b = p->free;
                p->free = b->next;
        }
        bool need_new = !halted_locked(z) && !b;
        pthread_mutex_unlock(&z->lock);

        if (need_new) {
                b = malloc(sizeof(Buf) + PZSTD_BUF_SIZE);
                if (!b)
                        return fail(z, -ENOMEM, "cannot allocate a %u byte zstd buffer", PZSTD_BUF_SIZE);
                pthread_mutex_lock(&z->lock);
                p->n_allocated++;
                b->all_next = z->all;
                z->all = b;
                pthread_mutex_unlock(&z->lock);
        }
        if (!b)
                return -ECANCELED;
        b->next = NULL;
        b->len = 0;
        b->last = false;
        *ret = b;
        return 0;
}

static void buf_put(PZstd *z, Pool *p, Buf *b)
{
        pthread_mutex_lock(&z->lock);
        b->next = p->free;
        p->free = b;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&z->lock);
}

static int queue_push(PZstd *z, Queue *q, Buf *b)
{
        pthread_mutex_lock(&z->lock);
        if (halted_locked(z)) {
                pthread_mutex_unlock(&z->lock);
                return -ECANCELED;
        }
        b->next = NULL;
        if (q->tail)
                q->tail->next = b;
        else
                q->head = b;
        q->tail = b;
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&z->lock);
        return 0;
}

/* Waits for a buffer; -ECANCELED once the stream failed or is being freed. */
static int queue_pop(PZstd *z, Queue *q, Buf **ret)
{
        pthread_mutex_lock(&z->lock);
        while (!q->head && !halted_locked(z))
                pthread_cond_wait(&q->cond, &z->lock);
        Buf *b = halted_locked(z) ? NULL : q->head;
        if (b) {
                q->head = b->next;
                if (!q->head)
                        q->tail = NULL;
        }
        pthread_mutex_unlock(&z->lock);
        if (!b)
                return -ECANCELED;
        *ret = b;
        return 0;
}

/* ---- driver ---- */

/* Hashes one input buffer and feeds it to libzstd, queueing each output buffer as it fills (and the last
 * one, marked last, when the frame is complete). */
static int compress_buf(PZstd *z, const Buf *in)
{
        if (in->len > 0 && !EVP_DigestUpdate(z->sha_in, in->data, in->len))
                return fail(z, -EIO, "cannot hash the uncompressed stream with SHA-256");
        ZSTD_inBuffer ib = {in->data, in->len, 0};
        ZSTD_EndDirective mode = in->last ? ZSTD_e_end : ZSTD_e_continue;
        for (;;) {
                if (!z->driver_out) {
                        int r = buf_get(z, &z->out_pool, &z->driver_out);
                        if (r < 0)
                                return r;
                }
                Buf *out = z->driver_out;
                ZSTD_outBuffer ob = {out->data, PZSTD_BUF_SIZE, out->len};
                /* Blocks inside libzstd only while it can neither take input nor give output. */
                size_t rem = ZSTD_compressStream2(z->cctx, &ob, &ib, mode);
                if (ZSTD_isError(rem))
                        return fail(z, -EIO, "zstd compression failed: %s", ZSTD_getErrorName(rem));
                out->len = ob.pos;
                bool done = in->last ? rem == 0 : ib.pos == ib.size;
                if (out->len == PZSTD_BUF_SIZE || (done && in->last)) {
                        out->last = done && in->last;
                        int r = queue_push(z, &z->out_q, TAKE_PTR(z->driver_out));
                        if (r < 0)
                                return r;
                }
                if (done)
                        return 0;
        }
}

static void *driver_main(void *arg)
{
        PZstd *z = arg;
        for (;;) {
                Buf *in;
                if (queue_pop(z, &z->in_q, &in) < 0)
                        return NULL;
                int r = compress_buf(z, in);
                bool last = in->last;
                buf_put(z, &z->in_pool, in);
                if (r < 0 || last)
                        return NULL;
        }
}

/* ---- writer ---- */

static int emit(PZstd *z, const Buf *b)
{
        if (b->len == 0)
                return 0;
        if (!EVP_DigestUpdate(z->sha_out, b->data, b->len))
                return fail(z, -EIO, "cannot hash the compressed stream with SHA-256");
        int r = z->output(z->userdata, b->data, b->len);
        if (r != 0)
                return fail(z, r, "cannot write compressed output at offset %" PRIu64 ": %s", z->size_out,
                            strerror(r < 0 ? -r : r));
        z->size_out += b->len;
        return 0;
}

static void *writer_main(void *arg)
{
        PZstd *z = arg;
        for (;;) {
                Buf *b;
                if (queue_pop(z, &z->out_q, &b) < 0)
                        return NULL;
                int r = emit(z, b);
                bool last = b->last;
                buf_put(z, &z->out_pool, b);
                if (r < 0)
                        return NULL;
                if (last) {
                        pthread_mutex_lock(&z->lock);
                        z->writer_done = true;
                        pthread_cond_broadcast(&z->cond_end);
                        pthread_mutex_unlock(&z->lock);
                        return NULL;
                }
        }
}

/* ---- setup and teardown ---- */

/* compress.c checked the format, the output callback, the thread count and the level. */
static int options_check(const SnapCompressorOptions *o, NbError *e)
{
        if (o->block_size != 0)
                return nb_error_set(e, -EINVAL, "zstd takes no block size (libzstd sizes its jobs itself)");
        return 0;
}

static int cctx_setup(PZstd *z, const SnapCompressorOptions *o, NbError *e)
{
        int level = o->level <= 0 ? PZSTD_LEVEL_DEFAULT : o->level;
        unsigned workers =
                o->threads ? o->threads : nb_cpus(PZSTD_THREADS_MAX); /* >= 1: see the top comment */
        z->cctx = ZSTD_createCCtx();
        if (!z->cctx)
                return nb_error_set(e, -ENOMEM, "cannot set up the zstd compressor: out of memory");
        size_t r = ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level);
        if (!ZSTD_isError(r))
                r = ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 1); /* what the zstd CLI writes */
        if (ZSTD_isError(r))
                return nb_error_set(e, -EINVAL, "cannot set zstd level %d: %s", level, ZSTD_getErrorName(r));
        r = ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_nbWorkers, (int)workers);
        if (ZSTD_isError(r))
                return nb_error_set(e, -EOPNOTSUPP,
                                    "libzstd %s cannot compress with %u worker threads (built without "
                                    "multithreading?): %s",
                                    ZSTD_versionString(), workers, ZSTD_getErrorName(r));
        return 0;
}

static int pzstd_alloc(const SnapCompressorOptions *o, PZstd **ret)
{
        PZstd *z = calloc(1, sizeof(PZstd));
        if (!z)
                return -ENOMEM;
        *ret = z; /* partially built: pzstd_free() copes */
        z->output = o->output;
        z->userdata = o->userdata;
        z->in_pool.max = PZSTD_IN_BUFS;
        z->out_pool.max = PZSTD_OUT_BUFS;
        int r = snap_digests_new(&z->sha_in, &z->sha_out);
        if (r < 0)
                return r;
        if (pthread_mutex_init(&z->lock, NULL) != 0)
                return -ENOMEM;
        pthread_cond_init(&z->cond_end, NULL);
        pthread_cond_init(&z->in_pool.cond, NULL);
        pthread_cond_init(&z->out_pool.cond, NULL);
        pthread_cond_init(&z->in_q.cond, NULL);
        pthread_cond_init(&z->out_q.cond, NULL);
        z->lock_initialized = true;
        return 0;
}

/* libzstd starts its workers from the driver thread, so they inherit its mask: every signal blocked. */
static int threads_start(PZstd *z, NbError *e)
{
        int r = snap_thread_start(&z->driver, driver_main, z);
        z->driver_started = r == 0;
        if (r == 0) {
                r = snap_thread_start(&z->writer, writer_main, z);
                z->writer_started = r == 0;
        }
        if (r < 0)
                return nb_error_set(e, r, "cannot start zstd threads: %s", strerror(-r));
        return 0;
}

static void pzstd_free(void *p);

/* The verbs below are the zstd backend of compress.h (snap_backend_zstd). */
static int pzstd_new(const SnapCompressorOptions *o, void **ret, NbError *e)
{
        PZstd *z = NULL;
        int r = options_check(o, e);
        if (r >= 0 && (r = pzstd_alloc(o, &z)) < 0)
                r = nb_error_set(e, r, "cannot set up the zstd compressor: %s", strerror(-r));
        if (r >= 0)
                r = cctx_setup(z, o, e);
        if (r >= 0)
                r = threads_start(z, e);
        if (r < 0) {
                pzstd_free(z);
                return r;
        }
        *ret = z;
        return 0;
}

static void pzstd_free(void *p)
{
        PZstd *z = p;
        if (!z)
                return;
        if (z->lock_initialized) {
                pthread_mutex_lock(&z->lock);
                z->stopping = true;
                broadcast_all_locked(z);
                pthread_mutex_unlock(&z->lock);
        }
        /* The driver may be inside ZSTD_compressStream2() waiting for a job: that ends on its own. */
        if (z->driver_started)
                pthread_join(z->driver, NULL);
        if (z->writer_started)
                pthread_join(z->writer, NULL);
        ZSTD_freeCCtx(z->cctx); /* joins libzstd's workers */
        if (z->lock_initialized) {
                pthread_cond_destroy(&z->cond_end);
                pthread_cond_destroy(&z->in_pool.cond);
                pthread_cond_destroy(&z->out_pool.cond);
                pthread_cond_destroy(&z->in_q.cond);
                pthread_cond_destroy(&z->out_q.cond);
                pthread_mutex_destroy(&z->lock);
        }
        for (Buf *b = z->all, *next; b; b = next) {
                next = b->all_next;
                free(b);
        }
        EVP_MD_CTX_free(z->sha_in);
        EVP_MD_CTX_free(z->sha_out);
        free(z);
}

/* ---- producer ---- */

static int current_get(PZstd *z, NbError *e)
{
        if (z->current)
                return 0;
        return buf_get(z, &z->in_pool, &z->current) < 0 ? error_copy(z, e) : 0;
}

static int current_submit(PZstd *z, bool last, NbError *e)
{
        z->current->last = last;
        return queue_push(z, &z->in_q, TAKE_PTR(z->current)) < 0 ? error_copy(z, e) : 0;
}

static int finished_error(PZstd *z, NbError *e)
{
        pthread_mutex_lock(&z->lock);
        int r = snap_error_finished(&z->error, "zstd", e);
        pthread_mutex_unlock(&z->lock);
        return r;
}

/* A full buffer is queued only when more input arrives, so the last one (ZSTD_e_end) is never empty after
 * a full one: the calls into libzstd depend on the input alone. */
static int pzstd_write(void *state, const void *data, size_t size, NbError *e)
{
        PZstd *z = state;
        const uint8_t *p = data;
        assert(z);
        if (z->finished)
                return finished_error(z, e);
        while (size > 0) {
                int r = current_get(z, e);
                if (r < 0)
                        return r;
                if (z->current->len == PZSTD_BUF_SIZE) {
                        r = current_submit(z, false, e);
                        if (r < 0)
                                return r;
                        continue;
                }
                size_t n = PZSTD_BUF_SIZE - z->current->len;
                if (n > size)
                        n = size;
                memcpy(z->current->data + z->current->len, p, n);
                z->current->len += n;
                z->size_in += n;
                p += n;
                size -= n;
        }
        return 0;
}

static int pzstd_finish(void *state, SnapCompressResult *ret, NbError *e)
{
        PZstd *z = state;
        assert(z);
        if (z->finished)
                return finished_error(z, e);
        int r = current_get(z, e);
        if (r >= 0)
                r = current_submit(z, true, e);
        if (r < 0)
                return r;
        z->finished = true;

        pthread_mutex_lock(&z->lock);
        while (!z->writer_done && !halted_locked(z))
                pthread_cond_wait(&z->cond_end, &z->lock);
        r = z->writer_done ? 0 : error_copy_locked(z, e);
        pthread_mutex_unlock(&z->lock);
        if (r < 0)
                return r;

        /* The driver hashed its last input before queueing the last output, which the writer took and
         * hashed before writer_done: the lock above orders both digests before us. */
        snap_digests_result(z->sha_in, z->sha_out, z->size_in, z->size_out, ret);
        return 0;
}

/* ---- the zstd backend of compress.h ---- */

static char engine_name[32];

static void engine_name_fill(void)
{
        snprintf(engine_name, sizeof(engine_name), "libzstd %s", ZSTD_versionString());
}

/* "libzstd 1.5.4": the library this process runs with, not the headers it was built against. */
static const char *backend_engine(void)
{
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        pthread_once(&once, engine_name_fill);
        return engine_name;
}

const SnapCompressorBackend snap_backend_zstd = {
        .name = "zstd",
        .level_min = PZSTD_LEVEL_MIN,
        .level_max = PZSTD_LEVEL_MAX,
        .level_default = PZSTD_LEVEL_DEFAULT,
        .engine = backend_engine,
        .new = pzstd_new,
        .write = pzstd_write,
        .finish = pzstd_finish,
        .free = pzstd_free,
};
