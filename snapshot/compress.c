/* compress.c: snap_compressor_*() over the table of backends, and the helpers the backends share. */
#include <assert.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "snapshot/compress.h"

static const SnapCompressorBackend *const backends[_SNAP_COMPRESSION_MAX] = {
        [SNAP_COMPRESSION_GZIP] = &snap_backend_gzip,
        [SNAP_COMPRESSION_ZSTD] = &snap_backend_zstd,
};

struct SnapCompressor {
        const SnapCompressorBackend *backend;
        void *state;
};

static const SnapCompressorBackend *backend_of(SnapCompression c)
{
        return (unsigned)c < _SNAP_COMPRESSION_MAX ? backends[c] : NULL;
}

const char *snap_compression_to_string(SnapCompression c)
{
        const SnapCompressorBackend *b = backend_of(c);
        return b ? b->name : "unknown";
}

int snap_compression_from_string(const char *s, SnapCompression *ret)
{
        for (SnapCompression c = 0; s && c < _SNAP_COMPRESSION_MAX; c++)
                if (strcmp(s, backends[c]->name) == 0) {
                        *ret = c;
                        return 0;
                }
        return -EINVAL;
}

const char *snap_compression_engine(SnapCompression c)
{
        const SnapCompressorBackend *b = backend_of(c);
        return b ? b->engine() : "unknown";
}

int snap_compression_level_check(SnapCompression c, int level, NbError *e)
{
        const SnapCompressorBackend *b = backend_of(c);
        if (!b)
                return nb_error_set(e, -EINVAL, "unknown compression %d", (int)c);
        if (level == -1)
                return 0;
        if (level < b->level_min || level > b->level_max)
                return nb_error_set(e, -EINVAL, "level %d is not a %s level: %s takes %d to %d (default %d)",
                                    level, b->name, b->name, b->level_min, b->level_max, b->level_default);
        return 0;
}

static int options_check(const SnapCompressorOptions *o, NbError *e)
{
        if (!o || !backend_of(o->format))
                return nb_error_set(e, -EINVAL, "unknown compression %d", o ? (int)o->format : -1);
        if (!o->output)
                return nb_error_set(e, -EINVAL, "no output callback given for the %s stream",
                                    snap_compression_to_string(o->format));
        if (o->threads > SNAP_COMPRESSOR_THREADS_MAX)
                return nb_error_set(e, -EINVAL, "too many compression threads: %u > %u", o->threads,
                                    SNAP_COMPRESSOR_THREADS_MAX);
        return snap_compression_level_check(o->format, o->level, e);
}

int snap_compressor_new(const SnapCompressorOptions *o, SnapCompressor **ret, NbError *e)
{
        assert(ret);
        int r = options_check(o, e);
        if (r < 0)
                return r;
        _cleanup_free_ SnapCompressor *c = calloc(1, sizeof(SnapCompressor));
        if (!c)
                return nb_error_oom(e);
        c->backend = backends[o->format];
        r = c->backend->new (o, &c->state, e);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

int snap_compressor_write(SnapCompressor *c, const void *data, size_t size, NbError *e)
{
        assert(c);
        return c->backend->write(c->state, data, size, e);
}

int snap_compressor_finish(SnapCompressor *c, SnapCompressResult *ret, NbError *e)
{
        assert(c);
        return c->backend->finish(c->state, ret, e);
}

SnapCompressor *snap_compressor_free(SnapCompressor *c)
{
        if (c) {
                c->backend->free(c->state);
                free(c);
        }
        return NULL;
}

/* ---- shared by the backends ---- */

int snap_digests_new(EVP_MD_CTX **ret_in, EVP_MD_CTX **ret_out)
{
        _cleanup_md_ctx_ EVP_MD_CTX *in = NULL;
        int r = nb_digest_ctx_new("sha256", &in);
        if (r >= 0)
                r = nb_digest_ctx_new("sha256", ret_out);
        if (r < 0)
                return r;
        *ret_in = TAKE_PTR(in);
        return 0;
}

void snap_digests_result(EVP_MD_CTX *in, EVP_MD_CTX *out, uint64_t size_in, uint64_t size_out,
                         SnapCompressResult *ret)
{
        SnapCompressResult result = {.size_in = size_in, .size_out = size_out};
        nb_digest_ctx_final(in, result.diff_id);
        nb_digest_ctx_final(out, result.digest);
        if (ret)
                *ret = result;
}

bool snap_error_record(NbError *held, int code, const char *fmt, va_list ap)
{
        if (held->code != 0)
                return false;
        vsnprintf(held->msg, sizeof(held->msg), fmt, ap);
        held->http_status = 0;
        held->code = code > 0 ? -code : code == 0 ? -EIO : code;
        return true;
}

int snap_error_copy(const NbError *held, const char *name, NbError *e)
{
        if (held->code == 0) /* stopped by the backend's free() rather than failed */
                return nb_error_set(e, -ECANCELED, "The %s stream was abandoned", name);
        if (e)
                *e = *held;
        return held->code;
}

int snap_error_finished(const NbError *held, const char *name, NbError *e)
{
        if (held->code == 0)
                return nb_error_set(e, -EINVAL, "The %s stream is already finished", name);
        return snap_error_copy(held, name, e);
}

int snap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
        sigset_t all, saved;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        int r = -pthread_create(t, NULL, fn, arg);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        return r;
}
